package catalog

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLockRefusalNamesTheJobAndWhatToDo: a second job on a held machine
// gets a BusyError (still ErrLocked) naming the holder, its kind and
// state, and the commands that wait for or cancel it; the refused job
// takes no lock.
func TestLockRefusalNamesTheJobAndWhatToDo(t *testing.T) {
	ctx := context.Background()
	c, _ := open(t)
	now := time.Unix(1_700_000_000, 0)
	require.NoError(t, c.PutJob(ctx, JobRow{ID: "j1", Kind: "reprotect", State: "running", Data: "{}", Created: now, Updated: now}))
	require.NoError(t, c.LockMachines(ctx, "j1", []string{"vm"}))

	err := c.LockMachines(ctx, "j2", []string{"other", "vm"})
	require.ErrorIs(t, err, ErrLocked)
	var busy *BusyError
	require.True(t, errors.As(err, &busy))
	require.Equal(t, BusyError{Machine: "vm", Job: "j1", Kind: "reprotect", State: "running"}, *busy)
	require.Equal(t, "machine vm is busy with job j1 (reprotect, running): wait for it (ferry jobs watch j1) or cancel it (ferry cancel j1 --force)", err.Error())

	holder, err := c.MachineJob(ctx, "other")
	require.NoError(t, err)
	require.Empty(t, holder, "the refused lock is all or nothing")
	require.Equal(t, c.Busy(ctx, "vm", "j1").Error(), busy.Error())
	// A holder not (or no longer) recorded is still named.
	require.Equal(t, "machine vm is busy with job gone: wait for it (ferry jobs watch gone) or cancel it (ferry cancel gone --force)", c.Busy(ctx, "vm", "gone").Error())
}
