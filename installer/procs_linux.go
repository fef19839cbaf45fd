package installer

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// binaryProcesses lists processes running the installed binary, or the
// binary an upgrade moved aside (its .prev, .new, or a deleted one). The
// calling process is left out: `ferry-agent uninstall` may run from it.
func binaryProcesses(binary string) []int {
	want := map[string]bool{binary: true, binary + ".prev": true, binary + ".new": true}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		if want[strings.TrimSuffix(exe, " (deleted)")] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killBinaryProcesses SIGKILLs what binaryProcesses finds.
func killBinaryProcesses(binary string) []int {
	pids := binaryProcesses(binary)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return pids
}
