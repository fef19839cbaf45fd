package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// A filesystem that holds the agent's state directory or log, or is the
// root, is tracked only when Config.FreezeOwnFS lists its mount point;
// the refusal names the option and the mount. A listed path that is not
// the top of a mount of that filesystem (a subdirectory, another mount)
// lets nothing through.
func TestOwnFilesystemsAreFrozenOnlyWhenListed(t *testing.T) {
	testenv.RequireRoot(t)
	dev := testenv.LoopDevice(t, 64<<20)
	mnt := testenv.MountExt4(t, dev)
	other := testenv.MountExt4(t, testenv.LoopDevice(t, 64<<20))
	state := filepath.Join(mnt, "state")
	require.NoError(t, os.MkdirAll(state, 0o700))
	img := filepath.Join(mnt, "disk.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	machine := func(path string) msg.MachineConfig {
		return msg.MachineConfig{Name: "m", Disks: []msg.DiskConfig{{Name: "d0", Path: path, BlockSize: 65536}}}
	}
	agentWith := func(c Config) *Agent {
		own, err := checkFreezeOwnFS(c.FreezeOwnFS)
		require.NoError(t, err)
		c.FreezeOwnFS = own
		return &Agent{cfg: c, log: slog.New(slog.DiscardHandler)}
	}
	refusal := func(what string) string {
		return fmt.Sprintf("the agent's %s is on the disks' filesystem, which the agent freezes only when --freeze-own-fs lists its mount point (%s)", what, mnt)
	}

	for _, disk := range []string{dev, img} { // a block device, an image file on it
		for _, tc := range []struct {
			cfg Config
			why string
		}{
			{Config{StateDir: state}, refusal("state directory")},
			{Config{StateDir: t.TempDir(), LogFile: filepath.Join(mnt, "agent.log")}, refusal("log")},
			{Config{StateDir: state, FreezeOwnFS: []string{state}}, refusal("state directory")}, // not a mount point
			{Config{StateDir: state, FreezeOwnFS: []string{other}}, refusal("state directory")},
			{Config{StateDir: state, FreezeOwnFS: []string{other, mnt + "/"}}, ""},
			{Config{StateDir: state, LogFile: filepath.Join(mnt, "agent.log"), FreezeOwnFS: []string{mnt}}, ""},
		} {
			_, mounts, why := agentWith(tc.cfg).trackable(machine(disk))
			if tc.why == "" {
				require.Empty(t, why, "%s %+v", disk, tc.cfg)
				require.Equal(t, []string{mnt}, mounts)
				continue
			}
			if disk == dev {
				tc.why = dev + ": " + tc.why
			}
			require.Equal(t, tc.why, why, "%s %+v", disk, tc.cfg)
		}
	}

	t.Run("root", func(t *testing.T) {
		// An image file on the root filesystem (where the test's
		// temporary directories are, when they are).
		tmp := t.TempDir()
		var st, root unix.Stat_t
		require.NoError(t, unix.Stat(tmp, &st))
		require.NoError(t, unix.Stat("/", &root))
		testenv.Require(t, st.Dev == root.Dev, "the temporary directory is not on the root filesystem")
		rimg := filepath.Join(tmp, "disk.img")
		require.NoError(t, os.WriteFile(rimg, make([]byte, 1<<20), 0o600))
		_, _, why := agentWith(Config{StateDir: state}).trackable(machine(rimg))
		require.Equal(t, "the disks are on the root filesystem, which the agent freezes only when --freeze-own-fs lists its mount point (/)", why)
		_, mounts, why := agentWith(Config{StateDir: state, FreezeOwnFS: []string{"/"}}).trackable(machine(rimg))
		require.Empty(t, why)
		require.Equal(t, []string{"/"}, mounts)
	})
}

func TestFreezeOwnFSMustBeAbsolute(t *testing.T) {
	c := Config{StateDir: t.TempDir(), FreezeOwnFS: []string{"mnt/data"}}
	require.EqualError(t, c.Validate(), `--freeze-own-fs "mnt/data": want the absolute path of a mount point`)
	c.FreezeOwnFS = []string{"/mnt/data/", "/"}
	require.NoError(t, c.Validate())
	require.Equal(t, []string{"/mnt/data", "/"}, c.FreezeOwnFS)
}
