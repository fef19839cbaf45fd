package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/agent/track"
)

func TestBlocksOfCoversWholeBlocksClippedToTheDisk(t *testing.T) {
	pages := []track.Range{{Offset: 0, Length: 4096}, {Offset: 8192, Length: 4096}, {Offset: 65536 + 4096, Length: 8192}, {Offset: 200 << 10, Length: 4096}}
	require.Equal(t, []snapshot.Range{{Offset: 0, Length: 128 << 10}, {Offset: 192 << 10, Length: 10 << 10}},
		blocksOf(pages, 64<<10, 202<<10), "blocks 0 and 1 merge; block 3 is cut at the disk's end")
	require.Equal(t, int64(138<<10), capturedBytes(pages, 64<<10, 202<<10))
	require.Empty(t, blocksOf([]track.Range{{Offset: 1 << 20, Length: 4096}}, 4096, 1<<20), "pages past the end")
}

func TestCapturedReadsOnlyWhatWasCaptured(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "d.img")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	pages := []track.Range{{Offset: 4096, Length: 4096}, {Offset: 512 << 10, Length: 8192}}
	c, err := capture(f, pages, 16<<10, int64(len(data)), func() bool { return false })
	require.NoError(t, err)
	require.Equal(t, []snapshot.Range{{Offset: 4096, Length: 4096}, {Offset: 512 << 10, Length: 8192}}, c.changed)

	buf := make([]byte, 16<<10)
	_, err = c.ReadAt(buf, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data[:16<<10], buf), "a captured block reads as the file held it")
	_, err = c.ReadAt(buf, 512<<10)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data[512<<10:528<<10], buf))
	_, err = c.ReadAt(buf, 16<<10)
	require.ErrorContains(t, err, "outside the blocks captured")

	_, err = capture(f, pages, 16<<10, int64(len(data)), func() bool { return true })
	require.ErrorContains(t, err, "freeze ran out")
}
