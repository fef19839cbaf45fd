// Command demo is `make demo`: on one machine, without root, it starts a
// controller and an agent on loopback in a temporary directory, protects a
// generated disk image, writes to it for a few seconds, waits for a point
// taken after the last write, shows machines and points, exports the point
// and checks it byte for byte against the image, then cleans up.
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
	"strings"
	"syscall"
	"time"

	"github.com/ferrydr/ferry/internal/syncbuf"
	"github.com/ferrydr/ferry/internal/workload"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding ferry and ferry-agent")
	size := flag.Int64("size", 256<<20, "disk image size in bytes")
	keep := flag.Bool("keep", false, "keep the temporary directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *size, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo FAILED:", err)
		os.Exit(1)
	}
	fmt.Println("demo OK")
}

type demo struct {
	dir, bin, admin string
	procs           []*exec.Cmd
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, bin string, size int64, keep bool) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	for _, b := range []string{"ferry", "ferry-agent"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("%s not built (run make build): %w", b, err)
		}
	}
	dir, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	d := &demo{dir: dir, bin: bin, admin: filepath.Join(dir, "controller", "admin.sock")}
	defer func() {
		for _, p := range d.procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
			p.Wait()
		}
		if keep {
			fmt.Println("kept", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()

	step("starting a controller in %s", dir)
	out, err := d.start("controller.log", "ferry", "serve", "--data", filepath.Join(dir, "controller"), "--listen", "127.0.0.1:0", "--admin-socket", d.admin)
	if err != nil {
		return err
	}
	m, err := waitFor(ctx, out, regexp.MustCompile(`listening on (\S+)`), 60*time.Second)
	if err != nil {
		return fmt.Errorf("controller did not start: %w", err)
	}
	addr := m[1]
	fmt.Println("    controller on", addr)

	step("enrolling an agent with a one-time token")
	token, err := d.ferry("tokens", "create")
	if err != nil {
		return err
	}
	state := filepath.Join(dir, "agent")
	if o, err := exec.CommandContext(ctx, filepath.Join(bin, "ferry-agent"), "enroll", "--controller", addr,
		"--token", strings.TrimSpace(token), "--name", "demo-host", "--state-dir", state,
		"--allow-exec-drivers").CombinedOutput(); err != nil { // the demo's power state is an exec --status command
		return fmt.Errorf("enroll: %v: %s", err, o)
	}
	if _, err := d.start("agent.log", "ferry-agent", "run", "--state-dir", state, "--scan", filepath.Join(dir, "vm")); err != nil {
		return err
	}
	if err := eventually(ctx, 30*time.Second, func() bool {
		o, err := d.ferry("agents", "list", "--json")
		return err == nil && strings.Contains(o, `"connected": true`)
	}); err != nil {
		return errors.New("the agent never connected")
	}

	step("generating a %d MiB disk image (holes, text, random data)", size>>20)
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	img := filepath.Join(vm, "disk0.img")
	if err := workload.WriteImage(img, 1, size); err != nil {
		return err
	}
	power := filepath.Join(dir, "power")
	os.WriteFile(power, []byte("running\n"), 0o644)

	step("protecting machine demo-vm (a crash-consistent point every 2s)")
	if _, err := d.ferry("policies", "create", "demo", "--rp-every", "2s", "--rpo-threshold", "30s"); err != nil {
		return err
	}
	if o, err := d.ferry("protect", "demo-vm", "--agent", "demo-host", "--disk", "disk0="+img, "--policy", "demo",
		"--status", "cat "+power); err != nil {
		return err
	} else {
		fmt.Print("    ", o)
	}

	step("writing to the disk for 4 seconds while it replicates")
	deadline := time.Now().Add(4 * time.Second)
	writes := workload.Delta(7, size, 1)
	n := 0
	for time.Now().Before(deadline) && n < len(writes) {
		if err := workload.Apply(img, 7, writes[n:n+1]); err != nil {
			return err
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
		o, err := d.ferry("points", "list", "demo-vm", "--json")
		if err != nil {
			return false
		}
		var ps []struct {
			ID          int64     `json:"id"`
			Time        time.Time `json:"time"`
			Consistency string    `json:"consistency"`
		}
		if json.Unmarshal([]byte(o), &ps) != nil || len(ps) == 0 {
			return false
		}
		p := ps[len(ps)-1]
		if p.Time.After(lastWrite) && p.Consistency != "inconsistent" {
			pointID = p.ID
			return true
		}
		return false
	}); err != nil {
		return errors.New("no point after the last write")
	}
	for _, args := range [][]string{{"machines", "list"}, {"points", "list", "demo-vm"}} {
		o, err := d.ferry(args...)
		if err != nil {
			return err
		}
		fmt.Printf("$ ferry %s\n%s", strings.Join(args, " "), o)
	}

	step("exporting point %d and comparing it with the disk, byte for byte", pointID)
	exp := filepath.Join(dir, "export")
	if _, err := d.ferry("points", "export", "demo-vm", "--point", fmt.Sprint(pointID), "--out", exp); err != nil {
		return err
	}
	a, err := fileHash(img)
	if err != nil {
		return err
	}
	b, err := fileHash(filepath.Join(exp, "disk0.raw"))
	if err != nil {
		return err
	}
	if a != b {
		return fmt.Errorf("export differs from the disk: %x vs %x", b, a)
	}
	fmt.Printf("    identical: sha256 %x\n", a)
	return nil
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
