// Command demo is `make demo`: on one machine it starts a controller and
// an agent on loopback in a temporary directory, protects a generated disk
// image, writes to it for a few seconds, waits for a point taken after the
// last write, shows machines and points, exports the point and checks it
// byte for byte against the image, checks that no point is inconsistent,
// then cleans up.
//
// The image lives on a filesystem that gives crash-consistent views of a
// running machine: by default an XFS filesystem (reflink clones) that the
// demo makes in a file of its temporary directory and loop-mounts, which
// needs root; without root, -image-dir names a directory on XFS or btrfs.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydr/ferry/internal/syncbuf"
	"github.com/ferrydr/ferry/internal/workload"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding ferry and ferry-agent")
	size := flag.Int64("size", 256<<20, "disk image size in bytes")
	keep := flag.Bool("keep", false, "keep the temporary directory (and the loop-mounted filesystem)")
	imageDir := flag.String("image-dir", "", "keep the disk image in a new directory under this one, on XFS or btrfs (default: a loop-mounted XFS the demo makes; needs root)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, options{bin: *bin, size: *size, keep: *keep, imageDir: *imageDir}); err != nil {
		fmt.Fprintln(os.Stderr, "demo FAILED:", err)
		os.Exit(1)
	}
	fmt.Println("demo OK")
}

type demo struct {
	dir, bin, admin string
	procs           []*exec.Cmd
}

// options are the demo's flags.
type options struct {
	bin      string
	size     int64
	keep     bool
	imageDir string // "": a loop-mounted XFS
}

// point is a point as `points list --json` shows it.
type point struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	Consistency string    `json:"consistency"`
	Method      string    `json:"method"`
	Reason      string    `json:"reason"`
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// run is the demo; it returns the machine's points as they stood at the
// end.
func run(ctx context.Context, o options) (points []point, err error) {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return nil, err
	}
	size := o.size
	for _, b := range []string{"ferry", "ferry-agent"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s not built (run make build): %w", b, err)
		}
	}
	dir, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return nil, err
	}
	d := &demo{dir: dir, bin: bin, admin: filepath.Join(dir, "controller", "admin.sock")}
	var fs *imageFS
	defer func() {
		for _, p := range d.procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
			p.Wait()
		}
		if o.keep {
			fmt.Println("kept", dir)
			if fs != nil {
				fmt.Println(fs.kept())
			}
			return
		}
		if fs != nil {
			if cerr := fs.remove(); cerr != nil && err == nil {
				err = cerr
			}
		}
		os.RemoveAll(dir)
	}()

	if o.imageDir == "" {
		step("making an XFS filesystem for the disk image (reflink clones: crash-consistent views of a running machine)")
	} else {
		step("keeping the disk image under %s", o.imageDir)
	}
	if fs, err = makeImageFS(dir, o.imageDir, size); err != nil {
		return nil, err
	}
	fmt.Println("    disk image directory", fs.dir, "("+fs.kind+")")

	step("starting a controller in %s", dir)
	out, err := d.start("controller.log", "ferry", "serve", "--data", filepath.Join(dir, "controller"), "--listen", "127.0.0.1:0", "--admin-socket", d.admin)
	if err != nil {
		return nil, err
	}
	m, err := waitFor(ctx, out, regexp.MustCompile(`listening on (\S+)`), 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("controller did not start: %w", err)
	}
	addr := m[1]
	fmt.Println("    controller on", addr)

	step("enrolling an agent with a one-time token")
	token, err := d.ferry("tokens", "create")
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "agent")
	if o, err := exec.CommandContext(ctx, filepath.Join(bin, "ferry-agent"), "enroll", "--controller", addr,
		"--token", strings.TrimSpace(token), "--name", "demo-host", "--state-dir", state,
		"--allow-exec-drivers").CombinedOutput(); err != nil { // the demo's power state is an exec --status command
		return nil, fmt.Errorf("enroll: %v: %s", err, o)
	}
	if _, err := d.start("agent.log", "ferry-agent", "run", "--state-dir", state, "--scan", filepath.Join(fs.dir, "vm")); err != nil {
		return nil, err
	}
	if err := eventually(ctx, 30*time.Second, func() bool {
		o, err := d.ferry("agents", "list", "--json")
		return err == nil && strings.Contains(o, `"connected": true`)
	}); err != nil {
		return nil, errors.New("the agent never connected")
	}

	step("generating a %d MiB disk image (holes, text, random data)", size>>20)
	vm := filepath.Join(fs.dir, "vm")
	os.MkdirAll(vm, 0o755)
	img := filepath.Join(vm, "disk0.img")
	if err := workload.WriteImage(img, 1, size); err != nil {
		return nil, err
	}
	power := filepath.Join(dir, "power")
	os.WriteFile(power, []byte("running\n"), 0o644)

	step("protecting machine demo-vm (a crash-consistent point every 2s)")
	if _, err := d.ferry("policies", "create", "demo", "--rp-every", "2s", "--rpo-threshold", "30s"); err != nil {
		return nil, err
	}
	if o, err := d.ferry("protect", "demo-vm", "--agent", "demo-host", "--disk", "disk0="+img, "--policy", "demo",
		"--status", "cat "+power); err != nil {
		return nil, err
	} else {
		fmt.Print("    ", o)
	}

	step("writing to the disk for 4 seconds while it replicates")
	deadline := time.Now().Add(4 * time.Second)
	writes := workload.Delta(7, size, 1)
	n := 0
	for time.Now().Before(deadline) && n < len(writes) {
		if err := workload.Apply(img, 7, writes[n:n+1]); err != nil {
			return nil, err
		}
		n++
		time.Sleep(2 * time.Millisecond)
	}
	// The machine is now "powered off": its disk no longer changes, and the
	// next view of it is crash-consistent by construction.
	os.WriteFile(power, []byte("stopped\n"), 0o644)
	lastWrite := time.Now()
	fmt.Printf("    %d writes of 4 KiB; writer stopped\n", n)

	step("waiting for a point taken after the last write")
	var pointID int64
	if err := eventually(ctx, 120*time.Second, func() bool {
		ps, err := d.points()
		if err != nil || len(ps) == 0 {
			return false
		}
		p := ps[len(ps)-1]
		if p.Time.After(lastWrite) && p.Consistency != "inconsistent" {
			pointID = p.ID
			return true
		}
		return false
	}); err != nil {
		return nil, errors.New("no point after the last write")
	}
	for _, args := range [][]string{{"machines", "list"}, {"points", "list", "demo-vm"}} {
		o, err := d.ferry(args...)
		if err != nil {
			return nil, err
		}
		fmt.Printf("$ ferry %s\n%s", strings.Join(args, " "), o)
	}

	step("exporting point %d and comparing it with the disk, byte for byte", pointID)
	exp := filepath.Join(dir, "export")
	if _, err := d.ferry("points", "export", "demo-vm", "--point", fmt.Sprint(pointID), "--out", exp); err != nil {
		return nil, err
	}
	a, err := fileHash(img)
	if err != nil {
		return nil, err
	}
	b, err := fileHash(filepath.Join(exp, "disk0.raw"))
	if err != nil {
		return nil, err
	}
	if a != b {
		return nil, fmt.Errorf("export differs from the disk: %x vs %x", b, a)
	}
	fmt.Printf("    identical: sha256 %x\n", a)

	step("checking that every point is consistent")
	if points, err = d.points(); err != nil {
		return nil, err
	}
	var methods []string
	for _, p := range points {
		if p.Consistency == "inconsistent" {
			return points, fmt.Errorf("point %d is inconsistent (%s: %s)", p.ID, p.Method, p.Reason)
		}
		if !slices.Contains(methods, p.Method) {
			methods = append(methods, p.Method)
		}
	}
	fmt.Printf("    no inconsistent points: %d points (%s)\n", len(points), strings.Join(methods, ", "))
	return points, nil
}

// points lists the demo machine's points.
func (d *demo) points() ([]point, error) {
	o, err := d.ferry("points", "list", "demo-vm", "--json")
	if err != nil {
		return nil, err
	}
	var ps []point
	if err := json.Unmarshal([]byte(o), &ps); err != nil {
		return nil, fmt.Errorf("points list --json: %w", err)
	}
	return ps, nil
}

func (d *demo) start(logName, prog string, args ...string) (*syncbuf.Buffer, error) {
	cmd := exec.Command(filepath.Join(d.bin, prog), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(filepath.Join(d.dir, logName))
	if err != nil {
		return nil, err
	}
	buf := &syncbuf.Buffer{}
	cmd.Stdout = io.MultiWriter(buf, logf)
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d.procs = append(d.procs, cmd)
	return buf, nil
}

func (d *demo) ferry(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(d.bin, "ferry"), append([]string{"--admin", d.admin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ferry %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func eventually(ctx context.Context, timeout time.Duration, f func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if f() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("timed out")
}

func waitFor(ctx context.Context, b *syncbuf.Buffer, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	var m []string
	err := eventually(ctx, timeout, func() bool {
		m = re.FindStringSubmatch(b.String())
		return m != nil
	})
	return m, err
}

func fileHash(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, nil
}
