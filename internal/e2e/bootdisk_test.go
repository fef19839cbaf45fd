package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// bootdiskScript builds the drill test's bootable Debian disk (see the
// script's header: MBR, one ext4 partition at 1 MiB, extlinux, the stock
// kernel, systemd and a marker service on the serial console).
//
//go:embed testdata/bootdisk.sh
var bootdiskScript string

// bootdiskMiB is the disk's size; about half of it holds data.
const bootdiskMiB = 640

// bootDisk writes a copy of the bootable disk to dst, building it once
// per machine under FERRY_TEST_CACHE (default /var/cache/ferry-test); it
// is never committed. Without FERRY_CI=1 a disk that cannot be built (no
// debootstrap, no mirror) skips the test; with it, that fails.
func bootDisk(t *testing.T, dst string) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"debootstrap", "extlinux", "sfdisk", "mkfs.ext4", "mount"} {
		testenv.RequireTool(t, tool)
	}
	if _, err := os.Stat("/usr/lib/syslinux/mbr/mbr.bin"); err != nil {
		testenv.Require(t, false, "no /usr/lib/syslinux/mbr/mbr.bin (scripts/test-deps.sh installs syslinux-common)")
	}
	cache := os.Getenv("FERRY_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/ferry-test"
	}
	sum := sha256.Sum256([]byte(bootdiskScript + fmt.Sprint(bootdiskMiB)))
	work := filepath.Join(cache, "bootdisk-"+hex.EncodeToString(sum[:6]))
	img := filepath.Join(work, "disk.raw")
	if _, err := os.Stat(img); err != nil {
		require.NoError(t, os.MkdirAll(work, 0o755))
		lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		require.NoError(t, err)
		defer lock.Close()
		require.NoError(t, syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)) // another run may be building it
		if _, err := os.Stat(img); err != nil {
			script := filepath.Join(work, "bootdisk.sh")
			require.NoError(t, os.WriteFile(script, []byte(bootdiskScript), 0o755))
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			start := time.Now()
			tmp := img + ".building"
			out, err := exec.CommandContext(ctx, "bash", script, work, tmp, debianMirror(), fmt.Sprint(bootdiskMiB)).CombinedOutput()
			if err != nil {
				log, _ := os.ReadFile(filepath.Join(work, "debootstrap.log"))
				lines := strings.Split(strings.TrimSpace(string(out)+string(log)), "\n")
				testenv.Require(t, false, fmt.Sprintf("cannot build the bootable Debian disk (%v): %s", err, strings.Join(lines[max(0, len(lines)-5):], " | ")))
			}
			require.NoError(t, os.Rename(tmp, img))
			// The debootstrapped tree was only needed to fill the disk.
			os.RemoveAll(filepath.Join(work, "root"))
			t.Logf("built the bootable disk %s in %s", img, time.Since(start).Round(time.Second))
		}
	}
	testenv.Run(t, "cp", "--sparse=always", img, dst)
}

// writeMarker writes /ferry/marker (random bytes) into the disk's root
// partition and returns its sha256 in hex, as the guest's marker service
// prints it.
func writeMarker(t *testing.T, img string) string {
	t.Helper()
	mnt := t.TempDir()
	testenv.Run(t, "mount", "-o", "loop,offset=1048576", img, mnt)
	defer testenv.Run(t, "umount", mnt)
	b := make([]byte, 4096)
	_, _ = rand.Read(b)
	require.NoError(t, os.MkdirAll(filepath.Join(mnt, "ferry"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "ferry", "marker"), b, 0o644))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
