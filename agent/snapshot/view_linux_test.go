package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/internal/testenv"
)

func runShell(ctx context.Context, line string, env map[string]string) error {
	_, err := driver.RunShell(ctx, line, env, driver.DefaultTimeout, "hook")
	return err
}

func TestViewSingleImageOnXFS(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 256<<20)
	img := filepath.Join(mnt, "d.img")
	require.NoError(t, os.WriteFile(img, []byte("version one"), 0o644))
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}}
	v, err := tk.Take(context.Background(), r)
	require.NoError(t, err)
	require.Equal(t, CrashConsistent, v.Consistency)
	require.Equal(t, MethodReflink, v.Method)
	require.True(t, v.Disks[0].Cloned)
	require.NoError(t, os.WriteFile(img, []byte("version two"), 0o644))
	got, err := os.ReadFile(v.Disks[0].Path)
	require.NoError(t, err)
	require.Equal(t, "version one", string(got))
	require.NoError(t, v.Keep(5))
	base, ok := tk.Base("m", r.Disks[0], 5)
	require.True(t, ok)
	got, err = os.ReadFile(base)
	require.NoError(t, err)
	require.Equal(t, "version one", string(got))

	v2, err := tk.Take(context.Background(), r)
	require.NoError(t, err)
	require.NoError(t, v2.Keep(6))
	_, ok = tk.Base("m", r.Disks[0], 5)
	require.False(t, ok, "older bases are removed when a newer one is kept")
	_, ok = tk.Base("m", r.Disks[0], 6)
	require.True(t, ok)

	v3, err := tk.Take(context.Background(), r)
	require.NoError(t, err)
	require.NoError(t, v3.Discard())
	_, err = os.Stat(v3.Disks[0].Path)
	require.True(t, os.IsNotExist(err))
	tk.RemoveAll("m", r.Disks)
	_, err = os.Stat(filepath.Join(mnt, viewsDir, "m"))
	require.True(t, os.IsNotExist(err))
}

func TestViewSeveralImages(t *testing.T) {
	ctx := context.Background()
	t.Run("btrfs subvolume", func(t *testing.T) {
		mnt := testenv.MountLoop(t, "btrfs", 256<<20)
		testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(mnt, "vm"))
		a, b := filepath.Join(mnt, "vm", "a.img"), filepath.Join(mnt, "vm", "b.img")
		require.NoError(t, os.WriteFile(a, []byte("a1"), 0o644))
		require.NoError(t, os.WriteFile(b, []byte("b1"), 0o644))
		tk := &Taker{}
		r := Request{Machine: "m", Disks: []Disk{{Name: "a", Path: a}, {Name: "b", Path: b}}}
		v, err := tk.Take(ctx, r)
		require.NoError(t, err)
		require.Equal(t, MethodBtrfs, v.Method)
		require.Equal(t, CrashConsistent, v.Consistency)
		require.NoError(t, os.WriteFile(b, []byte("b2"), 0o644))
		got, err := os.ReadFile(v.Disks[1].Path)
		require.NoError(t, err)
		require.Equal(t, "b1", string(got))
		require.NoError(t, v.Keep(3))
		p, ok := tk.Base("m", r.Disks[1], 3)
		require.True(t, ok)
		got, err = os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, "b1", string(got))
		tk.RemoveAll("m", r.Disks)
	})
	t.Run("xfs with and without a pause driver", func(t *testing.T) {
		mnt := testenv.MountLoop(t, "xfs", 256<<20)
		a, b := filepath.Join(mnt, "a.img"), filepath.Join(mnt, "b.img")
		require.NoError(t, os.WriteFile(a, []byte("a1"), 0o644))
		require.NoError(t, os.WriteFile(b, []byte("b1"), 0o644))
		log := filepath.Join(t.TempDir(), "log")
		tk := &Taker{}
		r := Request{Machine: "m", Disks: []Disk{{Name: "a", Path: a}, {Name: "b", Path: b}}}
		v, err := tk.Take(ctx, r)
		require.NoError(t, err)
		require.Equal(t, Inconsistent, v.Consistency, "clones one after another have no common instant")
		require.NoError(t, v.Discard())

		r.Driver = &driver.Exec{Commands: driver.Commands{Pause: "echo pause >> " + log, Resume: "echo resume >> " + log}}
		v, err = tk.Take(ctx, r)
		require.NoError(t, err)
		require.Equal(t, MethodPauseClone, v.Method)
		require.Equal(t, CrashConsistent, v.Consistency)
		got, err := os.ReadFile(log)
		require.NoError(t, err)
		require.Equal(t, "pause\nresume\n", string(got))
		require.NoError(t, v.Discard())
	})
}

func TestViewWithoutReflink(t *testing.T) {
	ctx := context.Background()
	dir := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(dir, "d.img")
	require.NoError(t, os.WriteFile(img, []byte("x"), 0o644))
	state := filepath.Join(t.TempDir(), "power")
	require.NoError(t, os.WriteFile(state, []byte("running\n"), 0o644))
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}},
		Driver: &driver.Exec{Commands: driver.Commands{Status: "cat " + state}}}
	// The image is written while it is read: no quiet-file view.
	written := func(v *View) {
		t.Helper()
		require.Equal(t, MethodQuietFile, v.Method, "precondition: a direct read of ext4 starts out quiet-file")
		require.NoError(t, os.WriteFile(img, []byte("y"), 0o644))
		v.ReadDone()
	}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	written(v)
	require.Equal(t, Inconsistent, v.Consistency)
	require.Equal(t, MethodDirect, v.Method)
	require.Equal(t, img, v.Disks[0].Path)
	// The point's reason says what was missing and what the machine did.
	require.Contains(t, v.Reason(), "no reflink or snapshot view on this filesystem (ext4)")
	require.Contains(t, v.Reason(), "the machine is running")
	require.Equal(t, MethodDirect+": "+v.Reason(), v.Note(), "older controllers get both in the note")

	// Without a status command nothing says the machine is off.
	v, err = tk.Take(ctx, Request{Machine: "m", Disks: r.Disks})
	require.NoError(t, err)
	written(v)
	require.Equal(t, Inconsistent, v.Consistency)
	require.Contains(t, v.Reason(), "no status command")

	require.NoError(t, os.WriteFile(state, []byte("stopped\n"), 0o644))
	v, err = tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, CrashConsistent, v.Consistency, "a powered-off machine read directly is crash-consistent")
	require.Equal(t, MethodPoweredOff, v.Method)
	require.Empty(t, v.Why, "only an inconsistent view says why it is")
}

// TestViewFreezeBound: a freeze that outlasts the taker's MaxFreeze is
// lifted at the bound, the view is not app-consistent, and its reason
// says that the freeze timed out.
func TestViewFreezeBound(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "xfs", 256<<20)
	app := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(mnt, "d.img")
	require.NoError(t, os.WriteFile(img, []byte("x"), 0o644))
	// The driver's status (asked while frozen) takes longer than the bound.
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, App: true, Freeze: []string{app}, RunCommand: runShell,
		Driver: &driver.Exec{Commands: driver.Commands{Status: "sleep 0.5; echo running"}}}
	tk := &Taker{MaxFreeze: 50 * time.Millisecond}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, CrashConsistent, v.Consistency)
	require.Contains(t, v.Reason(), "the freeze timed out")
	require.Contains(t, v.Reason(), "(50ms, --max-freeze)")
	require.NoError(t, v.Discard())

	tk.MaxFreeze = 0 // the default, 2 s, outlasts the status
	v, err = tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, AppConsistent, v.Consistency)
	require.NotContains(t, v.Reason(), "timed out")
	require.NoError(t, v.Discard())
}

func TestViewAppConsistent(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "xfs", 256<<20)
	app := testenv.MountLoop(t, "ext4", 64<<20) // the guest's data filesystem, frozen
	img := filepath.Join(mnt, "d.img")
	require.NoError(t, os.WriteFile(img, []byte("x"), 0o644))
	marks := filepath.Join(t.TempDir(), "marks")
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, App: true,
		PreSnapshot: "echo pre-$FERRY_MACHINE >> " + marks, PostSnapshot: "echo post >> " + marks,
		Freeze: []string{app, mnt}, Env: map[string]string{"FERRY_MACHINE": "m"}, RunCommand: runShell}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, AppConsistent, v.Consistency)
	require.Contains(t, v.Note(), "not freezing "+mnt, "the image's own filesystem is never frozen")
	got, err := os.ReadFile(marks)
	require.NoError(t, err)
	require.Equal(t, "pre-m\npost\n", string(got))
	require.NoError(t, os.WriteFile(filepath.Join(app, "after"), []byte("thawed"), 0o644), "the filesystem was thawed")
	require.NoError(t, v.Discard())

	r.PreSnapshot = "exit 1"
	v, err = tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, CrashConsistent, v.Consistency, "a failed quiesce is never labelled app-consistent")
	require.Contains(t, v.Note(), "pre-snapshot failed")
	require.NoError(t, v.Discard())
}
