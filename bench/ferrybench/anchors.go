package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/internal/netlab"
)

// The anchors: public tools run on the same data in the same run.

// zstdPipe times `zstd -1 -T2 -c img | cat >/dev/null` (BENCHMARKS.md's
// initial-sync anchor).
func zstdPipe(ctx context.Context, img string) (time.Duration, error) {
	d, _, err := timed(ctx, "bash", "-o", "pipefail", "-c", `zstd -q -1 -T2 -c -- "$1" | cat >/dev/null`, "zstd-pipe", img)
	return d, err
}

// catTime times `cat img >/dev/null` (the scan-cost anchor).
func catTime(ctx context.Context, img string) (time.Duration, error) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	cmd := exec.CommandContext(ctx, "cat", img)
	var errb strings.Builder
	cmd.Stdout, cmd.Stderr = null, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, &CmdError{Cmd: "cat " + img, Output: errb.String(), Err: err}
	}
	return time.Since(start), nil
}

// cpSparse times `cp --sparse=always --reflink=never img copy && sync`
// (the failover-materialize anchor; without --reflink=never, coreutils 9
// clones the extents on XFS and copies nothing).
func cpSparse(ctx context.Context, img, copy string) (time.Duration, error) {
	d, _, err := timed(ctx, "bash", "-c", `cp --sparse=always --reflink=never -- "$1" "$2" && sync`, "cp-sparse", img, copy)
	return d, err
}

// zstdSize is the size of `zstd -1` of what r yields.
func zstdSize(ctx context.Context, r io.Reader) (int64, error) {
	cmd := exec.CommandContext(ctx, "zstd", "-q", "-1", "-c")
	cmd.Stdin = r
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, cerr := io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return 0, &CmdError{Cmd: "zstd -1", Output: errb.String(), Err: err}
	}
	return n, cerr
}

// zstdFileSize is the zstd -1 size of a file.
func zstdFileSize(ctx context.Context, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return zstdSize(ctx, f)
}

// blocksReader yields the given blocks of a file, in order, back to back.
func blocksReader(f io.ReaderAt, blocks []int64, bs int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, bs)
		for _, b := range blocks {
			n, err := f.ReadAt(buf, b*int64(bs))
			if err != nil && err != io.EOF {
				pw.CloseWithError(err)
				return
			}
			clear(buf[n:])
			if _, err := pw.Write(buf); err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr
}

// touchedBlocks lists, sorted and once each, the blocks of size bs that
// writes of length n at offsets touch.
func touchedBlocks(offsets []int64, n int64, bs int) []int64 {
	var out []int64
	for _, off := range offsets {
		for b := off / int64(bs); b <= (off+n-1)/int64(bs); b++ {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// rsyncd is an rsync daemon on 127.0.0.1 (or on a lab site's address, in
// the site) with one writable module, "bench", rooted at a directory.
type rsyncd struct {
	p    *proc
	host string
	port int
	dir  string
}

func startRsyncd(ctx context.Context, work, dest string) (*rsyncd, error) {
	return startRsyncdIn(ctx, nil, work, dest)
}

// startRsyncdIn starts the daemon inside a lab site, on the site's address
// (site nil: here, on 127.0.0.1).
func startRsyncdIn(ctx context.Context, site *netlab.Site, work, dest string) (*rsyncd, error) {
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return nil, err
	}
	base, host := "rsyncd", "127.0.0.1"
	listen, dial := net.Listen, (&net.Dialer{}).DialContext
	if site != nil {
		base, host = "rsyncd-"+site.Name, site.Addr.String()
		listen, dial = site.Listen, site.Dial
	}
	conf := filepath.Join(work, base+".conf")
	text := fmt.Sprintf("use chroot = false\n[bench]\n\tpath = %s\n\tread only = false\n\tuid = 0\n\tgid = 0\n", dest)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	// A free port: the kernel's pick, released just before rsync binds it.
	ln, err := listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	bin, args := inSite(site, "rsync", "--daemon", "--no-detach",
		"--config="+conf, "--address="+host, "--port="+strconv.Itoa(port))
	p, err := startProc(base, filepath.Join(work, base+".log"), nil, bin, args...)
	if err != nil {
		return nil, err
	}
	d := &rsyncd{p: p, host: host, port: port, dir: dest}
	err = poll(ctx, 10*time.Second, 20*time.Millisecond, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("rsync daemon exited (log %s)", p.logPath)
		}
		c, err := dial(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		p.stop(5 * time.Second)
		return nil, err
	}
	return d, nil
}

func (d *rsyncd) close() { d.p.stop(5 * time.Second) }

var totalSentRE = regexp.MustCompile(`(?m)^Total bytes sent: ([\d,]+)`)

// parseTotalSent reads "Total bytes sent" from rsync --stats output.
func parseTotalSent(stats string) (int64, error) {
	m := totalSentRE.FindStringSubmatch(stats)
	if m == nil {
		return 0, fmt.Errorf("no \"Total bytes sent\" in rsync --stats output: %q", stats)
	}
	return strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
}

// push copies src to the daemon as name: a full copy, or with delta the
// `--inplace --no-whole-file` transfer against what the daemon holds. It
// returns the wall time and rsync's "Total bytes sent".
func (d *rsyncd) push(ctx context.Context, src, name string, delta bool) (time.Duration, int64, error) {
	args := []string{"-a", "--stats"}
	if delta {
		args = append(args, "--inplace", "--no-whole-file")
	}
	took, out, err := d.send(ctx, nil, src, name, args...)
	if err != nil {
		return 0, 0, err
	}
	sent, err := parseTotalSent(out)
	return took, sent, err
}

// send runs `rsync opts… src rsync://daemon/bench/name` inside the lab
// site from (nil: here) and returns its wall time and its output.
func (d *rsyncd) send(ctx context.Context, from *netlab.Site, src, name string, opts ...string) (time.Duration, string, error) {
	args := append(slices.Clone(opts), src, fmt.Sprintf("rsync://%s/bench/%s", net.JoinHostPort(d.host, strconv.Itoa(d.port)), name))
	bin, args := inSite(from, "rsync", args...)
	return timed(ctx, bin, args...)
}
