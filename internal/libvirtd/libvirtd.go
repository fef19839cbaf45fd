//go:build linux

package libvirtd

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/ferrydr/ferry/internal/testenv"
)

// Daemon is a running private libvirtd.
type Daemon struct {
	Dir    string // the temporary directory holding its state and socket
	Socket string // its read-write unix socket
	URI    string // qemu:///system?socket=Socket
	cmd    *exec.Cmd
	log    *bytes.Buffer
}

// qemuConf runs guests as root without relabelling or chowning the test's
// files, and writes their console logs to files (no virtlogd).
const qemuConf = `user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
`

const libvirtdConf = `unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
`

// script runs inside the new namespaces: bind the private directories over
// libvirt's fixed paths, bring loopback up, and exec libvirtd in the foreground.
const script = `set -e
d=$1
for p in run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt etc:/etc/libvirt; do
  mount --bind "$d/${p%%:*}" "${p#*:}"
done
ip link set lo up 2>/dev/null || true
exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
`

// EnsureQEMUUser creates the users and groups Debian's QEMU driver needs
// (it refuses to initialise without libvirt-qemu), idempotently.
func EnsureQEMUUser(t testing.TB) {
	t.Helper()
	for _, g := range []string{"kvm", "libvirt", "libvirt-qemu"} {
		if _, err := user.LookupGroup(g); err != nil {
			testenv.Run(t, "groupadd", "-r", "-f", g)
		}
	}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		testenv.Run(t, "useradd", "-r", "-g", "libvirt-qemu", "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin", "libvirt-qemu")
	}
}

// Start starts a private libvirtd and stops it at cleanup, after destroying
// and undefining every domain and network it holds.
func Start(t testing.TB) *Daemon {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"libvirtd", "qemu-system-x86_64", "unshare", "mount", "iptables"} {
		testenv.RequireTool(t, tool)
	}
	EnsureQEMUUser(t)
	// A short path: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "ferry-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"run", "lib", "cache", "log", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", "/etc/libvirt"} {
		if err := os.MkdirAll(p, 0o755); err != nil { // mount points on the host; left empty
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"qemu.conf": qemuConf, "libvirtd.conf": libvirtdConf} {
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "run", "libvirt-sock"), log: &bytes.Buffer{}}
	d.URI = "qemu:///system?socket=" + url.QueryEscape(d.Socket)
	d.cmd = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", script, "sh", dir)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start libvirtd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop(t, exited) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := d.connect()
		if err == nil {
			_ = l.Disconnect()
			return d
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("libvirtd exited: %v\n%s", err, d.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not answer on %s within 30 s: %v\n%s", d.Socket, err, d.log.String())
		}
	}
}

// Connect opens a go-libvirt connection to the daemon, closed at cleanup.
func (d *Daemon) Connect(t testing.TB) *golibvirt.Libvirt {
	t.Helper()
	l, err := d.connect()
	if err != nil {
		t.Fatalf("connect %s: %v", d.URI, err)
	}
	t.Cleanup(func() { _ = l.Disconnect() })
	return l
}

func (d *Daemon) connect() (*golibvirt.Libvirt, error) {
	u, err := url.Parse(d.URI)
	if err != nil {
		return nil, err
	}
	return golibvirt.ConnectToURI(u)
}

// DefineIsolatedNetwork defines and starts a libvirt network without
// forwarding (isolated), named name, on a bridge private to the daemon.
func (d *Daemon) DefineIsolatedNetwork(t testing.TB, name, bridge string) {
	t.Helper()
	l := d.Connect(t)
	n, err := l.NetworkDefineXML(fmt.Sprintf("<network><name>%s</name><bridge name='%s'/></network>", name, bridge))
	if err != nil {
		t.Fatalf("define network %s: %v", name, err)
	}
	if err := l.NetworkCreate(n); err != nil {
		t.Fatalf("start network %s: %v\n%s", name, err, d.log.String())
	}
}

// Log is what libvirtd wrote so far.
func (d *Daemon) Log() string { return d.log.String() }

func (d *Daemon) stop(t testing.TB, exited chan error) {
	if l, err := d.connect(); err == nil {
		if doms, _, err := l.ConnectListAllDomains(1, 0); err == nil {
			for _, dom := range doms {
				_ = l.DomainDestroy(dom)
				_ = l.DomainUndefineFlags(dom, golibvirt.DomainUndefineNvram|golibvirt.DomainUndefineManagedSave)
			}
		}
		if nets, _, err := l.ConnectListAllNetworks(1, 0); err == nil {
			for _, n := range nets {
				_ = l.NetworkDestroy(n)
				_ = l.NetworkUndefine(n)
			}
		}
		_ = l.Disconnect()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	select {
	case <-exited:
	case <-ctx.Done():
		_ = d.cmd.Process.Kill()
		<-exited
		t.Errorf("libvirtd did not exit on SIGTERM within 15 s; killed")
	}
	_ = os.RemoveAll(d.Dir)
}
