package profiling

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A goroutine that waits on a channel shows up in the blocking profile
// written beside the CPU profile (the profile is gzipped protobuf; its
// string table names the functions of its samples).
func TestStartWritesBlockProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.prof")
	stop, err := Start(path)
	require.NoError(t, err)
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() { waitOnChannelForProfile(ch); close(done) }()
	time.Sleep(50 * time.Millisecond)
	close(ch)
	<-done
	stop()

	f, err := os.Open(path + ".block")
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.True(t, bytes.Contains(raw, []byte("waitOnChannelForProfile")),
		"the 50 ms channel wait is not in the blocking profile")
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Positive(t, st.Size(), "no CPU profile written")
}

//go:noinline
func waitOnChannelForProfile(ch chan struct{}) { <-ch }
