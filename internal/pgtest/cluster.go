package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Bin is where Debian's postgresql package puts the server's programs:
// /usr/lib/postgresql/VERSION/bin, the newest version installed (15 on
// Debian 12; "" when none is).
func Bin() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestV := "", 0
	for _, d := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err == nil && v > bestV {
			best, bestV = d, v
		}
	}
	return best
}

// User is the account the programs run as.
const User = "postgres"

// Missing says what this machine lacks to run a cluster ("" when nothing):
// the programs under Bin, the postgres user, runuser.
func Missing() string {
	bin := Bin()
	if bin == "" {
		return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin; apt-get install postgresql)"
	}
	for _, p := range []string{"initdb", "pg_ctl", "postgres", "psql", "pgbench"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			return fmt.Sprintf("PostgreSQL is incompletely installed: %v", err)
		}
	}
	if _, err := user.Lookup(User); err != nil {
		return "no postgres user (apt-get install postgresql creates it)"
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		return "runuser is not on PATH (util-linux)"
	}
	return ""
}

// Chown gives paths (not recursively) to the postgres user: the data
// directory's parent, the socket directory and the log's directory must be
// its own.
func Chown(paths ...string) error {
	u, err := user.Lookup(User)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// Cluster is one PostgreSQL data directory and how its server listens:
// on a Unix socket only (listen_addresses is empty), so that clusters of
// one machine differ by socket directory and port, never by TCP.
type Cluster struct {
	Data string // data directory
	Sock string // socket directory
	Port int
	Log  string // the server's log (pg_ctl -l)
}

// CmdError is a program that failed, with its output.
type CmdError struct {
	Cmd    string
	Output string
	Err    error
}

func (e *CmdError) Error() string {
	return fmt.Sprintf("%s: %v\n%s", e.Cmd, e.Err, strings.TrimSpace(e.Output))
}

func (e *CmdError) Unwrap() error { return e.Err }

// run runs one of Bin's programs as the postgres user in dir ("" for /,
// which postgres can always enter) and returns its standard output.
func run(ctx context.Context, dir, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", User, "--", filepath.Join(Bin(), prog)}, args...)...)
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = "/"
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), &CmdError{Cmd: prog + " " + strings.Join(args, " "), Output: out.String() + errb.String(), Err: err}
	}
	return out.String(), nil
}

// Init makes a new cluster in c.Data (initdb, trust authentication, data
// checksums: a page torn or stale in a copy fails its check when read) and
// appends settings (postgresql.conf lines, e.g. "max_wal_size = 64MB").
// c.Data's parent, c.Sock and c.Log's directory must exist; Init gives
// them to the postgres user.
func (c *Cluster) Init(ctx context.Context, settings ...string) error {
	if err := Chown(filepath.Dir(c.Data), c.Sock, filepath.Dir(c.Log)); err != nil {
		return err
	}
	if _, err := run(ctx, "", "initdb", "-D", c.Data, "-A", "trust", "-U", User, "--data-checksums", "--no-instructions"); err != nil {
		return err
	}
	if len(settings) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(c.Data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("\n# pgtest\n" + strings.Join(settings, "\n") + "\n")
	return errors.Join(err, f.Close())
}

// Start starts the server and waits until it accepts connections. A
// cluster that was not shut down cleanly recovers first (redo of its WAL):
// Start waits for that too.
func (c *Cluster) Start(ctx context.Context) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=''", c.Port, c.Sock)
	_, err := run(ctx, "", "pg_ctl", "-D", c.Data, "-l", c.Log, "-o", opts, "-w", "-t", "300", "start")
	if err != nil {
		if log, rerr := os.ReadFile(c.Log); rerr == nil {
			err = fmt.Errorf("%w\nserver log:\n%s", err, log)
		}
	}
	return err
}

// Stop stops the server: mode "fast" (clean shutdown) or "immediate" (as
// after a crash: the next start recovers).
//
// pg_ctl returns once postmaster.pid is gone, a moment before the
// postmaster exits and lets go of the filesystem: Stop also waits for
// that, so that the caller can unmount it.
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	pid := c.postmasterPID()
	if _, err := run(ctx, "", "pg_ctl", "-D", c.Data, "-m", mode, "-w", "-t", "120", "stop"); err != nil {
		return err
	}
	if pid <= 0 {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the postmaster (pid %d) of %s outlived pg_ctl stop by 30 s", pid, c.Data)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// alive reports whether process pid exists and is not a zombie (which
// holds no file any more; the init of a container may never reap it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z")
}

// postmasterPID is the first line of postmaster.pid (0 when none).
func (c *Cluster) postmasterPID() int {
	b, err := os.ReadFile(filepath.Join(c.Data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// Running reports whether the cluster's server runs (pg_ctl status).
func (c *Cluster) Running(ctx context.Context) bool {
	_, err := run(ctx, "", "pg_ctl", "-D", c.Data, "status")
	return err == nil
}

// Query runs one SQL statement with psql and returns its rows, unaligned,
// the fields of a row separated by '|'.
func (c *Cluster) Query(ctx context.Context, sql string) (string, error) {
	out, err := run(ctx, "", "psql", "-h", c.Sock, "-p", strconv.Itoa(c.Port), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, "postgres")
	return strings.TrimSpace(out), err
}

// Traversable lets the postgres user reach path: every directory from /
// down to path that others cannot search gets o+x (temporary directories
// are made 0700, and the server must get to its data directory inside).
func Traversable(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.IsDir() && st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// Check runs pg_amcheck over every table and index of the postgres
// database (installing the amcheck extension, from postgresql-contrib, if
// needed), with the heap checked against its indexes: it fails on a
// corrupt page, a broken index or a tuple an index misses.
func (c *Cluster) Check(ctx context.Context) error {
	_, err := run(ctx, "", "pg_amcheck", "-h", c.Sock, "-p", strconv.Itoa(c.Port), "--install-missing", "--heapallindexed", "--parent-check", "postgres")
	return err
}
