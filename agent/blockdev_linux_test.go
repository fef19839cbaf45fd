//go:build linux

package agent_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/internal/rig"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestProtectMountedBlockDevice protects a loop device that holds a
// mounted ext4 filesystem, after its page cache was filled and a file was
// written through the filesystem: the staged replica of the first point
// holds what the device holds (the backing file), not the stale blocks a
// buffered read of the device returns.
func TestProtectMountedBlockDevice(t *testing.T) {
	const size = 32 << 20
	dev, backing := testenv.LoopFile(t, size)
	mnt := testenv.MountExt4(t, dev)

	// Fill the device's page cache, then write through the filesystem.
	readDevice := func() []byte {
		b, err := os.ReadFile(dev)
		require.NoError(t, err)
		require.Len(t, b, size)
		return b
	}
	readDevice()
	var content bytes.Buffer
	for i := 0; content.Len() < 1<<20; i++ {
		fmt.Fprintf(&content, "written through ext4 after the device was read, line %08d\n", i)
	}
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "new.dat"), content.Bytes(), 0o600))
	d, err := os.Open(mnt)
	require.NoError(t, err)
	require.NoError(t, unix.Syncfs(int(d.Fd())))
	require.NoError(t, d.Close())
	kept, err := os.ReadFile(backing)
	require.NoError(t, err)
	if bytes.Equal(readDevice(), kept) {
		t.Logf("a buffered read of %s matches its backing file: the kernel kept its cache coherent here, and this test cannot tell O_DIRECT from the cache", dev)
	} else {
		t.Logf("a buffered read of %s returns stale blocks (the precondition holds)", dev)
	}

	c := rig.NewController(t, jobs.Hooks{})
	src := c.Enroll("src")
	site := c.AddSite("dr")
	c.CreatePolicy("p", time.Hour)
	p := c.Protect(api.ProtectRequest{Machine: "m", Agent: src.Name, Disks: []api.DiskRef{{Name: "d", Path: dev}},
		Policy: "p", Target: site.Name, Driver: rig.SourceDriver(t.TempDir())}, site)
	rig.RequireFile(t, kept, site.SetDisk("m", "staged", "d"), "staged replica of the block device")
	require.NotContains(t, p.Reason, "page cache", "the device was read with O_DIRECT")

	again, err := os.ReadFile(backing)
	require.NoError(t, err)
	require.True(t, bytes.Equal(kept, again), "the filesystem wrote to the device while the test ran")
}
