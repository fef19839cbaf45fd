package ship

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol/data"
)

// The auto rule as a pure function of what a window measured.
func TestNextCodec(t *testing.T) {
	ms := time.Millisecond
	for name, tc := range map[string]struct {
		cur, want uint8
		m         measure
	}{
		"s2, the link keeps up":             {data.CodecS2, data.CodecS2, measure{compress: 10 * ms, send: 2 * ms}},
		"s2, the link about as fast":        {data.CodecS2, data.CodecS2, measure{compress: 10 * ms, send: 40 * ms}},
		"s2, the link is the bottleneck":    {data.CodecS2, data.CodecZstd, measure{compress: 10 * ms, send: 41 * ms}},
		"s2, a WAN":                         {data.CodecS2, data.CodecZstd, measure{compress: 10 * ms, send: 2000 * ms}},
		"zstd, a WAN":                       {data.CodecZstd, data.CodecZstd, measure{compress: 40 * ms, send: 2000 * ms}},
		"zstd, the link a little behind":    {data.CodecZstd, data.CodecZstd, measure{compress: 40 * ms, send: 6 * ms}},
		"zstd, the compressor is behind":    {data.CodecZstd, data.CodecS2, measure{compress: 40 * ms, send: 5 * ms}},
		"zstd, the send never waits":        {data.CodecZstd, data.CodecS2, measure{compress: 40 * ms}},
		"none stays none":                   {data.CodecNone, data.CodecNone, measure{send: time.Second}},
		"s2, nothing measured (all dedup)":  {data.CodecS2, data.CodecS2, measure{}},
		"zstd, nothing measured, goes fast": {data.CodecZstd, data.CodecS2, measure{}},
	} {
		require.Equal(t, tc.want, nextCodec(tc.cur, tc.m), name)
	}
}

// Hysteresis: the thresholds leave a band where neither codec moves, no
// decision is made before a window holds minEvidence plain bytes, and
// each switch doubles the evidence the next one waits for.
func TestChooserHysteresis(t *testing.T) {
	ms := time.Millisecond
	log := slog.New(slog.DiscardHandler)
	c := newChooser(CodecAuto, true, log)
	require.Equal(t, data.CodecS2, c.codec, "auto starts with S2 when offered")
	slow := measure{compress: ms, send: 10 * ms, plain: minEvidence / 4}
	for range 3 {
		c.observe(slow)
		require.Equal(t, data.CodecS2, c.codec, "decided before minEvidence")
	}
	c.observe(slow)
	require.Equal(t, data.CodecZstd, c.codec)
	require.Equal(t, int64(2*minEvidence), c.evidence)

	// In the band (send between compress/8 and 4×compress) nothing moves,
	// whichever codec is in use.
	band := measure{compress: 10 * ms, send: 5 * ms, plain: 2 * minEvidence}
	for range 4 {
		c.observe(band)
		require.Equal(t, data.CodecZstd, c.codec)
	}
	fast := measure{compress: 10 * ms, send: ms, plain: minEvidence}
	c.observe(fast)
	require.Equal(t, data.CodecZstd, c.codec, "half the evidence the second switch needs")
	c.observe(fast)
	require.Equal(t, data.CodecS2, c.codec)
	for range 4 {
		c.observe(band)
		require.Equal(t, data.CodecS2, c.codec)
	}
	require.Equal(t, int64(2), c.switches)
	require.Equal(t, int64(4*minEvidence), c.evidence)
	for range 10 {
		c.observe(measure{compress: ms, send: time.Second, plain: maxEvidence})
		c.observe(measure{compress: time.Second, send: ms, plain: maxEvidence})
	}
	require.Equal(t, int64(22), c.switches)
	require.Equal(t, int64(maxEvidence), c.evidence, "the evidence needed is bounded")

	// Fixed choices never move; S2 falls back to zstd when not offered,
	// and auto without S2 has nothing to choose.
	for _, tc := range []struct {
		choice CodecChoice
		s2     bool
		want   uint8
	}{
		{CodecZstd, true, data.CodecZstd}, {CodecS2, true, data.CodecS2}, {CodecNone, true, data.CodecNone},
		{CodecS2, false, data.CodecZstd}, {CodecAuto, false, data.CodecZstd}, {"", false, data.CodecZstd},
	} {
		c := newChooser(tc.choice, tc.s2, log)
		for range 4 {
			c.observe(measure{compress: time.Second, plain: maxEvidence})
			c.observe(measure{send: time.Second, plain: maxEvidence})
		}
		require.Equal(t, tc.want, c.codec, "%s, s2 offered %v", tc.choice, tc.s2)
	}
}

func TestParseCodecChoice(t *testing.T) {
	for in, want := range map[string]CodecChoice{"": CodecAuto, "auto": CodecAuto, "zstd": CodecZstd, "s2": CodecS2, "none": CodecNone} {
		got, err := ParseCodecChoice(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	for _, in := range []string{"S2", "lz4", "zstd "} {
		_, err := ParseCodecChoice(in)
		require.Error(t, err, in)
	}
}

// A switch is a trial: a first window on the new codec that costs the
// stream more time per plain byte than the window before (a controller
// behind, not the link) sends the stream back for the rest of the cycle;
// one that costs less keeps it.
func TestChooserTrial(t *testing.T) {
	ms := time.Millisecond
	log := slog.New(slog.DiscardHandler)
	waiting := measure{compress: 10 * ms, send: 100 * ms, plain: minEvidence} // 110 ms per window
	c := newChooser(CodecAuto, true, log)
	c.observe(waiting)
	require.Equal(t, data.CodecZstd, c.codec)
	c.observe(measure{compress: 40 * ms, send: 95 * ms, plain: 2 * minEvidence}) // 67.5 ms per 8 MiB
	require.Equal(t, data.CodecZstd, c.codec, "zstd made the stream faster")
	require.Equal(t, int64(1), c.switches)

	c = newChooser(CodecAuto, true, log)
	c.observe(waiting)
	require.Equal(t, data.CodecZstd, c.codec)
	c.observe(measure{compress: 40 * ms, send: 250 * ms, plain: 2 * minEvidence}) // 145 ms per 8 MiB
	require.Equal(t, data.CodecS2, c.codec, "zstd made the stream slower: back to S2")
	for range 4 {
		c.observe(measure{compress: 10 * ms, send: 200 * ms, plain: maxEvidence})
		require.Equal(t, data.CodecS2, c.codec, "settled for the cycle")
	}
	require.Equal(t, int64(2), c.switches)

	// Within trialMargin the new codec stays.
	c = newChooser(CodecAuto, true, log)
	c.observe(waiting)
	c.observe(measure{compress: 40 * ms, send: 190 * ms, plain: 2 * minEvidence}) // 115 ms per 8 MiB, under 121
	require.Equal(t, data.CodecZstd, c.codec)
}
