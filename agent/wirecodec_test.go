package agent

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/protocol/msg"
)

// A begin response from a controller before S2 (no codecs field) lets
// the cycle send none and zstd only; the current controller's offers S2.
func TestAcceptsS2FromTheBeginResponse(t *testing.T) {
	for body, want := range map[string]bool{
		`{"cycle":7,"head_point":3,"resync":false,"patches":true}`:                     false,
		`{"cycle":7,"head_point":3,"resync":false,"patches":true,"codecs":["s2"]}`:     true,
		`{"cycle":7,"head_point":3,"resync":false,"patches":true,"codecs":["brotli"]}`: false,
	} {
		var b msg.CycleBeginResponse
		require.NoError(t, json.Unmarshal([]byte(body), &b))
		require.Equal(t, want, acceptsS2(b), body)
	}
	// What the current controller sends round-trips to the same answer.
	enc, err := json.Marshal(msg.CycleBeginResponse{Cycle: 7, Codecs: []string{msg.WireCodecS2}})
	require.NoError(t, err)
	require.Contains(t, string(enc), `"codecs":["s2"]`)
}

// The wire codec setting is checked with the rest of the configuration.
func TestConfigWireCodec(t *testing.T) {
	c := DefaultConfig()
	c.StateDir = t.TempDir()
	require.NoError(t, c.Validate())
	require.Equal(t, ship.CodecAuto, c.WireCodec)
	c.WireCodec = "lz4"
	require.Error(t, c.Validate())
	c.WireCodec = ship.CodecS2
	require.NoError(t, c.Validate())
	require.Equal(t, ship.CodecS2, c.WireCodec)
}
