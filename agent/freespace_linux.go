package agent

import "golang.org/x/sys/unix"

// freeBytes is the space an unprivileged writer may still use on the
// filesystem holding dir (0 when unknown).
func freeBytes(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}
