package workload

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

func TestLayoutShares(t *testing.T) {
	const size = 2 << 30
	var holes, text, random int64
	for _, r := range Layout(1, size) {
		switch r.Kind {
		case Hole:
			holes += r.Length
		case Text:
			text += r.Length
		case Random:
			random += r.Length
		}
	}
	require.Equal(t, int64(size), holes+text+random)
	require.InDelta(t, 0.4, float64(holes)/size, 0.08)
	require.InDelta(t, 0.3, float64(text)/size, 0.08)
	require.InDelta(t, 0.3, float64(random)/size, 0.08)
}

func TestFillIsPositionIndependent(t *testing.T) {
	for _, k := range []Kind{Text, Random} {
		whole := make([]byte, 200_000)
		Fill(whole, 9, 1000, k)
		part := make([]byte, 5000)
		Fill(part, 9, 1000+70_000, k)
		require.True(t, bytes.Equal(whole[70_000:75_000], part), "kind %d", k)
	}
}

func TestTextCompressesAbout2_3(t *testing.T) {
	buf := make([]byte, 8<<20)
	Fill(buf, 3, 0, Text)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	out := enc.EncodeAll(buf, nil)
	ratio := float64(len(buf)) / float64(len(out))
	t.Logf("klauspost SpeedFastest ratio %.2f", ratio)
	if z, err := exec.LookPath("zstd"); err == nil {
		p := filepath.Join(t.TempDir(), "t")
		require.NoError(t, os.WriteFile(p, buf, 0o644))
		cli, err := exec.Command(z, "-1", "-c", p).Output()
		require.NoError(t, err)
		ratio = float64(len(buf)) / float64(len(cli))
		t.Logf("zstd -1 ratio %.2f", ratio)
	}
	require.InDelta(t, 2.3, ratio, 0.35)
}
