package agent

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A mountinfo as a host with two loop devices shows it: 7:0 mounted twice
// (a bind mount of a subdirectory first), 7:1 not at all, 8:1 the root.
const sampleMountinfo = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:21 / /proc rw,nosuid - proc proc rw
61 22 7:0 /data /srv/bind rw,relatime shared:30 - ext4 /dev/loop0 rw
62 22 7:0 / /mnt/with\040space rw,relatime shared:31 - ext4 /dev/loop0 rw
63 22 7:2 / /mnt/other rw,relatime - xfs /dev/loop2 rw
`

func TestMountinfoFindsTheFilesystemToFreeze(t *testing.T) {
	mi, err := parseMountinfo(strings.NewReader(sampleMountinfo))
	require.NoError(t, err)
	require.Len(t, mi, 5)
	require.Equal(t, mountEntry{major: 7, minor: 0, root: "/", point: "/mnt/with space", fstype: "ext4"}, mi[3])

	for _, tc := range []struct {
		major, minor uint32
		mount, why   string
	}{
		{7, 0, "/mnt/with space", ""}, // the mount of its root, not the bind mount
		{7, 2, "/mnt/other", ""},
		{7, 1, "", "no mounted filesystem to freeze"},
		{8, 1, "/", "it holds the root filesystem, which the agent freezes only when --freeze-own-fs lists its mount point (/)"},
	} {
		mount, why := mi.freezable(tc.major, tc.minor)
		require.Equal(t, tc.mount, mount, "%d:%d", tc.major, tc.minor)
		require.Equal(t, tc.why, why, "%d:%d", tc.major, tc.minor)
	}

	// A bind mount alone still freezes the filesystem.
	mi, err = parseMountinfo(strings.NewReader("61 22 7:0 /data /srv/bind rw - ext4 /dev/loop0 rw\n"))
	require.NoError(t, err)
	mount, why := mi.freezable(7, 0)
	require.Equal(t, "/srv/bind", mount)
	require.Empty(t, why)

	_, err = parseMountinfo(strings.NewReader("61 22 7:0 /\n"))
	require.Error(t, err)
	require.Equal(t, `a\b`, unescapeMount(`a\134b`))
	require.Equal(t, `a\0`, unescapeMount(`a\0`))
}
