package controller

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/storage"
)

// TestAPIErrorMapping: the one mapper at the admin boundary gives each
// condition an admin can act on its code, and never turns an I/O or
// database error into a refusal: those stay internal.
func TestAPIErrorMapping(t *testing.T) {
	ioErr := &fs.PathError{Op: "write", Path: "/data/catalog.db", Err: errors.New("input/output error")}
	cases := []struct {
		err  error
		code string // "" = internal (not an *api.Error)
	}{
		{lifecycle.Check("m", catalog.StateCommitted, lifecycle.Failover), api.CodeFailedPrecondition},
		{fmt.Errorf("start: %w", lifecycle.Check("m", catalog.StateSyncing, lifecycle.Commit)), api.CodeFailedPrecondition},
		{fmt.Errorf("machine m: %w", catalog.ErrNotFound), api.CodeNotFound},
		{fmt.Errorf("x: %w", catalog.ErrExists), api.CodeConflict},
		{catalog.ErrLocked, api.CodeBusy},
		{&catalog.BusyError{Machine: "m", Job: "j", Kind: "failback", State: "running"}, api.CodeBusy},
		{jobs.ErrNotRunning, api.CodeUnavailable},
		{fmt.Errorf("%w \"yesterday\"", points.ErrBadSpec), api.CodeInvalid},
		{fmt.Errorf("%w: none", points.ErrNoPoint), api.CodeNotFound},
		{storage.ErrWrongKey, api.CodeInvalid},
		{protocol.Errorf(protocol.CodeUnavailable, "agent away"), api.CodeUnavailable},
		{fmt.Errorf("target agent: %w", protocol.Errorf(protocol.CodeFailedPrecondition, "set is written")), api.CodeFailedPrecondition},
		{api.Errorf(api.CodeInvalid, "bad"), api.CodeInvalid},
		{ioErr, ""},
		{fmt.Errorf("reading machines: %w", ioErr), ""},
		{errors.New("database is locked"), ""},
	}
	for _, c := range cases {
		got := apiErr(c.err)
		var ae *api.Error
		if c.code == "" {
			require.False(t, errors.As(got, &ae), "%v must stay internal, got %v", c.err, got)
			require.ErrorIs(t, got, c.err, "the chain is kept")
			continue
		}
		require.True(t, errors.As(got, &ae), "%v", c.err)
		require.Equal(t, c.code, ae.Code, "%v", c.err)
		require.Equal(t, c.err.Error(), ae.Message, "the text is kept")
	}
	require.NoError(t, apiErr(nil))
}
