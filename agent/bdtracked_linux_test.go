package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/agent/track"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// A block tracker on a real loop device: it starts fresh, goes on after a
// restart from its pinned bitmap and saved state, counts afresh when a
// start finds that a run died inside a freeze, starts over when the
// device is resized, and is unpinned when its machine is forgotten.
func TestBlockTrackerGoesOnAfterARestart(t *testing.T) {
	testenv.RequireRoot(t)
	dev := testenv.LoopDevice(t, 16<<20)
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	require.NoError(t, bdtrack.RemovePinned(dev, bdtrack.Options{}))
	state := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	const bs = 65536
	var st unix.Stat_t
	require.NoError(t, unix.Stat(dev, &st))
	id := fmt.Sprintf("%d_%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	start := func() *blockTracker {
		b, err := startBlockTracker(dev, bs, state, id, log)
		if err != nil && strings.Contains(err.Error(), "not supported") {
			testenv.Require(t, false, "bdtrack: "+err.Error())
		}
		require.NoError(t, err)
		return b
	}
	write := func(off int64) {
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte("written"), off)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
	}

	b := start()
	require.True(t, b.t.Fresh)
	c, err := b.Cut()
	require.NoError(t, err)
	require.Zero(t, c.Base)
	b.Commit(7)
	require.NoError(t, b.Save())
	write(3 * bs)
	require.NoError(t, b.Close())

	// Restarted: the pinned bitmap kept the write, the state its base.
	b = start()
	require.False(t, b.t.Fresh)
	c, err = b.Cut()
	require.NoError(t, err)
	require.Equal(t, track.Cut{Ranges: []track.Range{{Offset: 3 * bs, Length: bs}}, Base: 7}, c)
	require.NoError(t, b.Save())
	write(5 * bs)
	require.NoError(t, b.Close())

	// Uncommitted cuts are kept across a restart too.
	b = start()
	c, err = b.Cut()
	require.NoError(t, err)
	require.Equal(t, []track.Range{{Offset: 3 * bs, Length: bs}, {Offset: 5 * bs, Length: bs}}, c.Ranges)
	require.Equal(t, int64(7), c.Base)
	require.NoError(t, b.Close()) // this cut is not saved

	// A run that died between a cut and its save left the freezing note:
	// the next start drops the saved state, and the tracker counts afresh.
	require.NoError(t, os.WriteFile(filepath.Join(state, freezingFile), []byte(filepath.Join(state, "gone")), 0o600))
	(&Agent{cfg: Config{StateDir: state}, log: log}).thawLeftFrozen()
	b = start()
	require.False(t, b.t.Fresh)
	c, err = b.Cut()
	require.NoError(t, err)
	require.Zero(t, c.Base)
	b.Commit(9)
	require.NoError(t, b.Save())

	// Resized: the cut says the window is lost and a new tracker counts.
	back, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/backing_file")
	require.NoError(t, err)
	require.NoError(t, os.Truncate(strings.TrimSpace(string(back)), 32<<20))
	testenv.Run(t, "losetup", "-c", dev)
	c, err = b.Cut()
	require.NoError(t, err)
	require.Equal(t, "the device was resized: its tracker started afresh", c.Lost)
	require.True(t, b.t.Fresh)
	b.Commit(10)
	write(20 * bs)
	c, err = b.Cut()
	require.NoError(t, err)
	require.Equal(t, track.Cut{Ranges: []track.Range{{Offset: 20 * bs, Length: bs}}, Base: 10}, c)
	require.NoError(t, b.Save())
	require.NoError(t, b.Close())

	// A machine no longer replicated leaves nothing pinned or saved.
	pin := "/sys/fs/bpf/ferry/" + id
	require.DirExists(t, pin)
	require.FileExists(t, b.state)
	a := &Agent{cfg: Config{StateDir: state}, log: log}
	a.dropBlockTrackers(msg.MachineConfig{Name: "m", Disks: []msg.DiskConfig{{Name: "d", Path: dev, BlockSize: bs}}})
	require.NoDirExists(t, pin)
	require.NoFileExists(t, b.state)
}
