package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CmdError is a failed external command with what it printed.
type CmdError struct {
	Cmd    string
	Output string
	Err    error
}

func (e *CmdError) Error() string {
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, strings.TrimSpace(e.Output))
}
func (e *CmdError) Unwrap() error { return e.Err }

// command runs name with args and returns its stdout; stderr goes into the
// error.
func command(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), &CmdError{Cmd: name + " " + strings.Join(args, " "), Output: errb.String() + out.String(), Err: err}
	}
	return out.String(), nil
}

// timed runs a command with stdout discarded and returns its wall time.
func timed(ctx context.Context, name string, args ...string) (time.Duration, string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, "", &CmdError{Cmd: name + " " + strings.Join(args, " "), Output: errb.String(), Err: err}
	}
	return d, out.String(), nil
}

// dropCaches writes back dirty pages and empties the page cache, so the
// next read of an image comes from the device (the state every timed step
// starts from).
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// requireTools fails unless every program is on PATH.
func requireTools(names ...string) error {
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools %v (scripts/bench.sh installs them from Debian)", missing)
	}
	return nil
}

// procStatus reads one "Name:   N kB" field of /proc/PID/status in bytes.
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) != 2 || fs[1] != "kB" {
			return 0, fmt.Errorf("/proc/%d/status %s: unexpected %q", pid, field, v)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		return n << 10, err
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// treeSize sums a directory tree: allocated bytes (st_blocks × 512, what
// `du -s -B1` reports) and apparent bytes (st_size, what `du -sb` reports).
func treeSize(dir string) (allocated, apparent int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		allocated += st.Blocks * 512
		if d.Type().IsRegular() {
			apparent += st.Size
		}
		return nil
	})
	return allocated, apparent, err
}

// allocatedFraction is the share of a file's size that holds data.
func allocatedFraction(path string) (float64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	if st.Size == 0 {
		return 0, errors.New(path + " is empty")
	}
	return float64(st.Blocks*512) / float64(st.Size), nil
}

// reflinkCopy clones src to dst (FICLONE): an instant copy sharing extents.
func reflinkCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		out.Close()
		return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// usage is what a process has consumed so far: CPU time and the bytes it
// made the block layer read and write (/proc/PID/stat and /proc/PID/io).
type usage struct {
	CPU                   time.Duration
	ReadBytes, WriteBytes int64
}

// userHZ is the unit of /proc/PID/stat's utime and stime: USER_HZ, 100 on
// every Linux ABI Go supports.
const userHZ = 100

// procUsage reads a process's usage so far.
func procUsage(pid int) (usage, error) {
	var u usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14 and stime 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fs := strings.Fields(string(stat[i+1:]))
	if len(fs) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fs))
	}
	ut, err1 := strconv.ParseInt(fs[11], 10, 64)
	st, err2 := strconv.ParseInt(fs[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u.CPU = time.Duration(ut+st) * time.Second / userHZ
	io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(io), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "read_bytes":
			u.ReadBytes = n
		case "write_bytes":
			u.WriteBytes = n
		}
	}
	return u, nil
}

func (u usage) sub(v usage) usage {
	return usage{CPU: u.CPU - v.CPU, ReadBytes: u.ReadBytes - v.ReadBytes, WriteBytes: u.WriteBytes - v.WriteBytes}
}
