package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
)

// ErrUnknownSite is returned for a site name the lab was not built with.
var ErrUnknownSite = errors.New("netlab: unknown site")

// Shape is how a site's link to the router behaves. The zero Shape is a
// clean link.
type Shape struct {
	// Rate caps each direction of the link, in bits per second (0: no cap).
	Rate int64
	// Delay is added to every packet entering and to every packet leaving
	// the site: a round trip between two sites takes twice the sum of
	// their delays.
	Delay time.Duration
	// Loss is the percentage (0–100) of packets dropped in each direction.
	Loss int
}

func (s Shape) validate() error {
	if s.Rate < 0 || s.Delay < 0 || s.Loss < 0 || s.Loss > 100 {
		return fmt.Errorf("netlab: invalid shape %+v", s)
	}
	if s.Rate > 0 && s.Rate < 64_000 {
		return fmt.Errorf("netlab: rate %d bit/s is below the 64 kbit/s the lab supports", s.Rate)
	}
	return nil
}

// Lab is a set of site namespaces joined through a router namespace.
type Lab struct {
	prefix string
	router string // router namespace
	sites  map[string]*Site
	order  []*Site
	delay  *delayer
	mu     sync.Mutex // serialises changes of shapes and cuts
}

// Site is one namespace of the lab.
type Site struct {
	lab   *Lab
	Name  string
	NS    string     // namespace name, for `ip netns exec`
	Addr  netip.Addr // the site's address (10.77.N.2)
	index int        // N
	shape Shape
	cut   bool
}

// routerIf is the router's end of the site's veth pair.
func (s *Site) routerIf() string { return fmt.Sprintf("s%d", s.index) }

func (s *Site) subnet() string { return fmt.Sprintf("10.77.%d.0/24", s.index) }

// New builds a lab with the named sites (at most 200) for a test or a
// benchmark and removes it at its cleanup. Without root, ip, tc or nft the
// test is skipped (failed under FERRY_CI=1).
func New(t testing.TB, sites ...string) *Lab {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"ip", "tc", "nft"} {
		testenv.RequireTool(t, tool)
	}
	l, err := Build(sites...)
	if l != nil {
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Logf("netlab cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	return l
}

// Build builds a lab with the named sites (at most 200), for programs
// that are not tests; Close removes it. It needs root, ip, tc and nft. On
// an error after the first namespace exists it returns the partial lab
// too, for Close.
func Build(sites ...string) (*Lab, error) {
	if len(sites) == 0 || len(sites) > 200 {
		return nil, fmt.Errorf("netlab: %d sites; want 1–200", len(sites))
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	l := &Lab{prefix: fmt.Sprintf("nl%d%s", os.Getpid(), hex.EncodeToString(rnd[:])), sites: map[string]*Site{}}
	l.router = l.prefix + "-router"
	if err := l.build(sites); err != nil {
		return l, err
	}
	return l, nil
}

func (l *Lab) build(names []string) error {
	if err := run("ip", "netns", "add", l.router); err != nil {
		return err
	}
	if err := l.routerSysctls(); err != nil {
		return err
	}
	if err := run("ip", "-n", l.router, "link", "set", "lo", "up"); err != nil {
		return err
	}
	for i, name := range names {
		if _, dup := l.sites[name]; dup {
			return fmt.Errorf("site %q named twice", name)
		}
		s := &Site{lab: l, Name: name, NS: l.prefix + "-" + name, index: i + 1}
		s.Addr = netip.AddrFrom4([4]byte{10, 77, byte(s.index), 2})
		l.sites[name] = s
		l.order = append(l.order, s)
		gw := fmt.Sprintf("10.77.%d.1", s.index)
		steps := [][]string{
			{"ip", "netns", "add", s.NS},
			{"ip", "-n", s.NS, "link", "set", "lo", "up"},
			{"ip", "-n", l.router, "link", "add", s.routerIf(), "type", "veth", "peer", "name", "eth0", "netns", s.NS},
			{"ip", "-n", l.router, "addr", "add", gw + "/24", "dev", s.routerIf()},
			{"ip", "-n", s.NS, "addr", "add", s.Addr.String() + "/24", "dev", "eth0"},
			{"ip", "-n", l.router, "link", "set", s.routerIf(), "up"},
			{"ip", "-n", s.NS, "link", "set", "eth0", "up"},
			{"ip", "-n", s.NS, "route", "add", "default", "via", gw},
		}
		for _, st := range steps {
			if err := run(st[0], st[1:]...); err != nil {
				return err
			}
		}
	}
	if err := l.nft(l.baseRules()); err != nil {
		return err
	}
	d, err := newDelayer(l)
	if err != nil {
		return err
	}
	l.delay = d
	return nil
}

// routerSysctls turns forwarding on and reverse-path filtering off (packets
// come back from the TUN device with other sites' source addresses).
func (l *Lab) routerSysctls() error {
	return inNetns(l.router, func() error {
		for _, kv := range [][2]string{
			{"/proc/sys/net/ipv4/ip_forward", "1"},
			{"/proc/sys/net/ipv4/conf/all/rp_filter", "0"},
			{"/proc/sys/net/ipv4/conf/default/rp_filter", "0"},
			{"/proc/sys/net/ipv4/conf/all/accept_local", "1"},
		} {
			if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", kv[0], err)
			}
		}
		return nil
	})
}

// baseRules is the router's nftables ruleset: the cut set first, then each
// site's blackholed ports, then one chain per site and direction holding
// its loss rule and its counter.
func (l *Lab) baseRules() string {
	var b strings.Builder
	b.WriteString("table inet netlab {\n\tset cut { type ifname; }\n")
	for _, s := range l.order {
		fmt.Fprintf(&b, "\tset ports_%d { type inet_service; }\n", s.index)
		fmt.Fprintf(&b, "\tcounter from_%d { }\n\tcounter to_%d { }\n", s.index, s.index)
		fmt.Fprintf(&b, "\tchain from_%d { counter name \"from_%d\"; }\n", s.index, s.index)
		fmt.Fprintf(&b, "\tchain to_%d { counter name \"to_%d\"; }\n", s.index, s.index)
	}
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n")
	b.WriteString("\t\tiifname @cut drop\n\t\toifname @cut drop\n")
	for _, s := range l.order {
		fmt.Fprintf(&b, "\t\tiifname %q tcp sport @ports_%d drop\n\t\toifname %q tcp dport @ports_%d drop\n",
			s.routerIf(), s.index, s.routerIf(), s.index)
	}
	for _, s := range l.order {
		fmt.Fprintf(&b, "\t\tiifname %q jump from_%d\n\t\toifname %q jump to_%d\n", s.routerIf(), s.index, s.routerIf(), s.index)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// Site returns the named site. An unknown name is a programming error: it
// panics with ErrUnknownSite (use Lookup to ask).
func (l *Lab) Site(name string) *Site {
	s, err := l.Lookup(name)
	if err != nil {
		panic(err)
	}
	return s
}

// Lookup returns the named site, or ErrUnknownSite.
func (l *Lab) Lookup(name string) (*Site, error) {
	s, ok := l.sites[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownSite, name)
	}
	return s, nil
}

// Shape applies sh to the site's link, replacing its previous shape.
func (s *Site) Shape(sh Shape) error {
	if err := sh.validate(); err != nil {
		return err
	}
	l := s.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := s.setRate(sh.Rate); err != nil {
		return err
	}
	var b strings.Builder
	for _, dir := range []string{"from", "to"} {
		fmt.Fprintf(&b, "flush chain inet netlab %s_%d\n", dir, s.index)
		if sh.Loss > 0 {
			fmt.Fprintf(&b, "add rule inet netlab %s_%d numgen random mod 100 < %d drop\n", dir, s.index, sh.Loss)
		}
		fmt.Fprintf(&b, "add rule inet netlab %s_%d counter name \"%s_%d\"\n", dir, s.index, dir, s.index)
	}
	if err := l.nft(b.String()); err != nil {
		return err
	}
	if err := l.delay.set(s, sh.Delay); err != nil {
		return err
	}
	s.shape = sh
	return nil
}

// Shaped returns the shape in force.
func (s *Site) Shaped() Shape {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	return s.shape
}

// setRate puts a tbf on both ends of the veth pair, or removes it.
func (s *Site) setRate(bits int64) error {
	ends := [][2]string{{s.NS, "eth0"}, {s.lab.router, s.routerIf()}}
	for _, e := range ends {
		if bits == 0 {
			// Deleting the default qdisc fails: nothing to remove then.
			_ = run("tc", "-n", e[0], "qdisc", "del", "dev", e[1], "root")
			continue
		}
		// A burst of 10 ms at the rate (at least 32 KiB so a GSO segment
		// fits) and a queue of up to 200 ms.
		burst := max(bits/8/100, 32<<10)
		err := run("tc", "-n", e[0], "qdisc", "replace", "dev", e[1], "root", "tbf",
			"rate", fmt.Sprintf("%dbit", bits), "burst", fmt.Sprint(burst), "latency", "200ms")
		if err != nil {
			return err
		}
	}
	return nil
}

// Cut partitions the site from every other: its packets are dropped
// silently in both directions until Heal.
func (s *Site) Cut() error {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	if err := s.lab.nft(fmt.Sprintf("add element inet netlab cut { %q }\n", s.routerIf())); err != nil {
		return err
	}
	s.cut = true
	return nil
}

// Heal ends a Cut.
func (s *Site) Heal() error {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	if !s.cut {
		return nil
	}
	if err := s.lab.nft(fmt.Sprintf("delete element inet netlab cut { %q }\n", s.routerIf())); err != nil {
		return err
	}
	s.cut = false
	return nil
}

// Blackhole drops, silently and in both directions, the TCP packets of
// the site's connections that use port on the site's side, until
// Unblackhole; other connections pass. With Cut and Heal it makes a
// partition after which the old connections stay dead while new ones
// work, as when a stateful firewall or NAT on the path lost its flows.
func (s *Site) Blackhole(port uint16) error {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	return s.lab.nft(fmt.Sprintf("add element inet netlab ports_%d { %d }\n", s.index, port))
}

// Unblackhole ends a Blackhole.
func (s *Site) Unblackhole(port uint16) error {
	s.lab.mu.Lock()
	defer s.lab.mu.Unlock()
	return s.lab.nft(fmt.Sprintf("delete element inet netlab ports_%d { %d }\n", s.index, port))
}

// IsCut reports whether the router holds the site's interface in its cut
// set (read back from nftables, not from the lab's memory).
func (s *Site) IsCut() (bool, error) {
	out, err := output("ip", "netns", "exec", s.lab.router, "nft", "-j", "list", "set", "inet", "netlab", "cut")
	if err != nil {
		return false, err
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []any `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return false, fmt.Errorf("netlab: nft set output: %w", err)
	}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			if e == s.routerIf() {
				return true, nil
			}
		}
	}
	return false, nil
}

// Count is what a counter saw: IP packets and their bytes (IP headers
// included).
type Count struct{ Packets, Bytes int64 }

// Traffic is what crossed the router for one site, after cuts and loss.
type Traffic struct {
	From Count // sent by the site and accepted by the router
	To   Count // forwarded by the router to the site
}

// Traffic reads the site's counters.
func (s *Site) Traffic() (Traffic, error) {
	var tr Traffic
	for _, c := range []struct {
		name string
		dst  *Count
	}{{fmt.Sprintf("from_%d", s.index), &tr.From}, {fmt.Sprintf("to_%d", s.index), &tr.To}} {
		out, err := output("ip", "netns", "exec", s.lab.router, "nft", "-j", "list", "counter", "inet", "netlab", c.name)
		if err != nil {
			return Traffic{}, err
		}
		var doc struct {
			Nftables []struct {
				Counter *struct {
					Packets int64 `json:"packets"`
					Bytes   int64 `json:"bytes"`
				} `json:"counter"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return Traffic{}, fmt.Errorf("netlab: nft counter output: %w", err)
		}
		found := false
		for _, o := range doc.Nftables {
			if o.Counter != nil {
				c.dst.Packets, c.dst.Bytes, found = o.Counter.Packets, o.Counter.Bytes, true
			}
		}
		if !found {
			return Traffic{}, fmt.Errorf("netlab: counter %s not found", c.name)
		}
	}
	return tr, nil
}

// Command prepares a command that runs inside the site's namespace.
func (s *Site) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", s.NS, name}, args...)...)
}

// Listen opens a listener inside the site's namespace.
func (s *Site) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(s.NS, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the site's namespace.
func (s *Site) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(s.NS, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside the site's namespace.
func (s *Site) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(s.NS, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// inNetns runs fn on a locked OS thread moved into the named namespace.
// Sockets fn creates belong to that namespace for their whole life. The
// thread goes back to its namespace afterwards; if that fails it stays
// locked and dies with the goroutine, so no other goroutine ever runs in
// the wrong namespace.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: open own netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: open netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netlab: setns back: %w", err))
			return // the thread stays locked and exits with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// nft loads a script into the router's nftables.
func (l *Lab) nft(script string) error {
	cmd := exec.Command("ip", "netns", "exec", l.router, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netlab: nft: %w: %s\nscript:\n%s", err, bytes.TrimSpace(out), script)
	}
	return nil
}

// Close stops the forwarder and deletes every namespace (their veth pairs
// go with them). It goes on past failures and returns them all.
func (l *Lab) Close() error {
	var errs []error
	if l.delay != nil {
		l.delay.close()
		l.delay = nil
	}
	for _, s := range l.order {
		if err := run("ip", "netns", "del", s.NS); err != nil {
			errs = append(errs, err)
		}
	}
	if err := run("ip", "netns", "del", l.router); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

func output(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("netlab: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}
