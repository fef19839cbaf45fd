package controller

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// TestDiskGuard: below the reserve check returns a *DiskFullError that
// reaches agents as unavailable (retryable); a data stream wrapped by the
// guard fails its next read once space runs low (rechecked after
// reserveRecheckBytes); the default reserve is min(1 GiB, 5 %).
func TestDiskGuard(t *testing.T) {
	avail := int64(100 << 20)
	g := &diskGuard{dir: "/data", reserve: 64 << 20, free: func(string) (int64, int64, error) { return avail, 1 << 40, nil }}
	require.NoError(t, g.check(true))

	src := bytes.NewReader(make([]byte, 2*reserveRecheckBytes))
	r := g.reader(struct {
		io.Reader
		io.Writer
	}{src, io.Discard})
	buf := make([]byte, reserveRecheckBytes)
	_, err := io.ReadFull(r, buf)
	require.NoError(t, err)
	avail = 10 << 20
	_, err = r.Read(buf)
	require.ErrorIs(t, err, ErrDiskFull, "the stream rechecks after %d bytes", reserveRecheckBytes)
	var dfe *DiskFullError
	require.True(t, errors.As(err, &dfe))
	require.Equal(t, int64(10<<20), dfe.Free)
	pe := protocol.AsError(err)
	require.Equal(t, protocol.CodeUnavailable, pe.Code)
	require.True(t, protocol.Retryable(pe))
	require.Contains(t, pe.Message, DiskFullReason)

	avail = 100 << 20
	require.NoError(t, g.check(true), "space freed: replication resumes")

	g, err = newDiskGuard(t.TempDir(), -1)
	require.NoError(t, err)
	_, total, err := freeSpace(g.dir)
	require.NoError(t, err)
	require.Equal(t, min(int64(DefaultReserveMax), total*DefaultReservePercent/100), g.reserve)
	off, err := newDiskGuard(t.TempDir(), 0)
	require.NoError(t, err)
	require.NoError(t, off.check(true), "a zero reserve is off")
}
