package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/agent/disk"
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
	one := []track.Range{{Offset: 3 * bs, Length: bs}}
	require.Equal(t, track.Cut{Ranges: one, Fresh: one, Base: 7}, c)
	require.NoError(t, b.Save())
	write(5 * bs)
	require.NoError(t, b.Close())

	// Uncommitted cuts are kept across a restart too.
	b = start()
	c, err = b.Cut()
	require.NoError(t, err)
	require.Equal(t, []track.Range{{Offset: 3 * bs, Length: bs}, {Offset: 5 * bs, Length: bs}}, c.Ranges)
	require.Equal(t, []track.Range{{Offset: 5 * bs, Length: bs}}, c.Fresh, "the cut's own window")
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
	require.Contains(t, c.Lost, "state was not saved", "the cut names why it cannot vouch for the head point")
	b.Commit(9)
	require.NoError(t, b.Save())
	require.NoError(t, b.Close())

	// A saved state that does not decode: the tracker counts afresh and
	// its first cut says why.
	require.NoError(t, os.WriteFile(b.state, []byte("FRYBDST\x00 torn"), 0o600))
	b = start()
	require.False(t, b.t.Fresh)
	c, err = b.Cut()
	require.NoError(t, err)
	require.Zero(t, c.Base)
	require.Contains(t, c.Lost, "saved state is unreadable")
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
	twenty := []track.Range{{Offset: 20 * bs, Length: bs}}
	require.Equal(t, track.Cut{Ranges: twenty, Fresh: twenty, Base: 10}, c)
	require.NoError(t, b.Save())
	require.NoError(t, b.Close())

	// Another block size (a re-protect): the pinned tracker does not
	// match; it is dropped and a new one starts, saying why.
	b, err = startBlockTracker(dev, bs/2, state, id, log)
	require.NoError(t, err)
	require.True(t, b.t.Fresh)
	require.ErrorIs(t, b.t.FreshReason, bdtrack.ErrMismatch)
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

// Two block devices with mounted ext4 filesystems: one freeze covers
// both (the note lists both mounts while it lasts), the first cut counts
// from nothing, and after a commit the next capture holds the dirty
// blocks of each device as the device holds them after the thaw (but for
// the blocks written since).
func TestTrackedFreezeOfTwoBlockDevices(t *testing.T) {
	testenv.RequireRoot(t)
	devs := []string{testenv.LoopDevice(t, 64<<20), testenv.LoopDevice(t, 64<<20)}
	var mnts []string
	for _, d := range devs {
		t.Cleanup(func() { bdtrack.RemovePinned(d, bdtrack.Options{}) })
		mnts = append(mnts, testenv.MountExt4(t, d))
	}
	a := &Agent{cfg: Config{StateDir: t.TempDir(), MaxFreeze: 2 * time.Second, MaxCapture: DefaultMaxCapture, Now: time.Now},
		log: slog.New(slog.DiscardHandler)}
	cfg := msg.MachineConfig{Name: "m"}
	for i, d := range devs {
		cfg.Disks = append(cfg.Disks, msg.DiskConfig{Name: fmt.Sprint("d", i), Path: d, BlockSize: 65536})
	}
	disks, mounts, why := a.trackable(cfg)
	require.Empty(t, why)
	require.Equal(t, mnts, mounts)
	disks, err := a.tracking.ensure(cfg.Name, disks)
	if err != nil && strings.Contains(err.Error(), "not supported") {
		testenv.Require(t, false, "bdtrack: "+err.Error())
	}
	require.NoError(t, err)
	t.Cleanup(func() { a.tracking.stop(nil) })

	fz := a.freezeAndCapture(cfg, disks, mounts, nil)
	require.NoError(t, fz.err)
	require.Nil(t, fz.caps)
	require.Equal(t, "write tracking has just started", fz.why)
	for _, d := range disks {
		d.t.Commit(5)
	}
	for i, m := range mnts {
		require.NoError(t, os.WriteFile(filepath.Join(m, "f"), bytes.Repeat([]byte{byte('a' + i)}, 300<<10), 0o600))
	}
	unix.Sync()

	fz = a.freezeAndCapture(cfg, disks, mounts, nil)
	require.NoError(t, fz.err)
	require.Empty(t, fz.why)
	require.Equal(t, int64(5), fz.base)
	require.Len(t, fz.caps, 2)
	_, err = os.Stat(a.freezingNote(cfg.Name))
	require.ErrorIs(t, err, os.ErrNotExist, "the note outlived the freeze")
	for i, c := range fz.caps {
		require.NotEmpty(t, c.changed, "disk %d", i)
		// The device as it is now, less the blocks written since the
		// freeze's cut (ext4 writes its superblock at the thaw): those
		// must equal the capture.
		disks[i].t.Commit(6)
		src, err := disk.Open(devs[i], disk.OpenOptions{Format: disk.FormatRaw})
		require.NoError(t, err)
		exts, err := c.Extents(t.Context())
		require.NoError(t, err)
		now := make([][]byte, len(exts))
		for j, e := range exts {
			now[j] = make([]byte, e.Length)
			_, err := src.ReadAt(now[j], e.Offset)
			require.NoError(t, err)
		}
		src.Close()
		since, err := disks[i].t.Cut()
		require.NoError(t, err)
		rewritten := func(off int64) bool {
			for _, r := range since.Ranges {
				if off >= r.Offset && off < r.Offset+r.Length {
					return true
				}
			}
			return false
		}
		var n int64
		for j, e := range exts {
			got := make([]byte, e.Length)
			_, err = c.ReadAt(got, e.Offset)
			require.NoError(t, err)
			for off := int64(0); off < e.Length; off += 65536 {
				if rewritten(e.Offset + off) {
					continue
				}
				end := min(off+65536, e.Length)
				require.True(t, bytes.Equal(now[j][off:end], got[off:end]), "disk %d: captured block at %d differs from the device", i, e.Offset+off)
				n += end - off
			}
		}
		require.GreaterOrEqual(t, n, int64(300<<10), "disk %d: the file's blocks were not all captured", i)
	}
	// Both filesystems are thawed: a write returns.
	for _, m := range mnts {
		require.NoError(t, os.WriteFile(filepath.Join(m, "g"), []byte("after"), 0o600))
	}
}
