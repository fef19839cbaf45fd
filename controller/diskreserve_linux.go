package controller

import "syscall"

// freeSpace is the space an unprivileged writer may still use on the
// filesystem of dir, and its size.
func freeSpace(dir string) (avail, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}
