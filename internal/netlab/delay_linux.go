package netlab

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The delaying forwarder (see the package doc): packets to or from a site
// with a delay are routed into a TUN device in the router namespace, held
// here for the sum of their two sites' delays and written back into the
// device, from which the router's main table forwards them.

const (
	tunName = "nldelay"
	// delayTable is the routing table that sends packets into the TUN
	// device; prefFromTun and prefSite are the rules' priorities.
	delayTable  = "100"
	prefFromTun = "100"
	prefSite    = "200"
	// queueBytes bounds what the forwarder holds; beyond it packets are
	// dropped, as a router's full queue would.
	queueBytes = 64 << 20
)

type delayer struct {
	lab    *Lab
	tun    *os.File
	delays [256]atomic.Int64 // one-way delay per site index, in ns
	routed map[int]bool      // sites whose packets go through the TUN device

	mu     sync.Mutex
	q      packetHeap
	qBytes int
	seq    uint64
	wake   chan struct{}

	dropped atomic.Int64
	done    chan struct{}
	wg      sync.WaitGroup
}

type packet struct {
	due  time.Time
	seq  uint64 // arrival order: equal due times keep it
	data []byte
}

type packetHeap []packet

func (h packetHeap) Len() int { return len(h) }
func (h packetHeap) Less(i, j int) bool {
	if h[i].due.Equal(h[j].due) {
		return h[i].seq < h[j].seq
	}
	return h[i].due.Before(h[j].due)
}
func (h packetHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap) Push(x any)   { *h = append(*h, x.(packet)) }
func (h *packetHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}

func newDelayer(l *Lab) (*delayer, error) {
	var fd int
	err := inNetns(l.router, func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("netlab: open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(tunName)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("netlab: TUNSETIFF: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d := &delayer{lab: l, tun: os.NewFile(uintptr(fd), tunName), routed: map[int]bool{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	for _, st := range [][]string{
		{"ip", "-n", l.router, "link", "set", tunName, "up"},
		{"ip", "-n", l.router, "route", "add", "default", "dev", tunName, "table", delayTable},
		// What comes back out of the forwarder is routed normally.
		{"ip", "-n", l.router, "rule", "add", "pref", prefFromTun, "iif", tunName, "lookup", "main"},
	} {
		if err := run(st[0], st[1:]...); err != nil {
			d.tun.Close()
			return nil, err
		}
	}
	d.wg.Go(d.read)
	d.wg.Go(d.write)
	return d, nil
}

// set gives a site its one-way delay and routes its packets through the
// forwarder while the delay is not zero.
func (d *delayer) set(s *Site, delay time.Duration) error {
	d.delays[s.index].Store(int64(delay))
	want := delay > 0
	if d.routed[s.index] == want {
		return nil
	}
	verb := "add"
	if !want {
		verb = "del"
	}
	for _, sel := range [][]string{{"iif", s.routerIf()}, {"to", s.subnet()}} {
		args := append([]string{"-n", d.lab.router, "rule", verb, "pref", prefSite}, sel...)
		if err := run("ip", append(args, "lookup", delayTable)...); err != nil {
			return err
		}
	}
	d.routed[s.index] = want
	return nil
}

// delayOf returns the hold time of an IPv4 packet: its source site's delay
// plus its destination site's. ok is false for anything else.
func (d *delayer) delayOf(p []byte) (time.Duration, bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return 0, false
	}
	site := func(a []byte) int64 {
		if a[0] == 10 && a[1] == 77 {
			return d.delays[a[2]].Load()
		}
		return 0
	}
	return time.Duration(site(p[12:16]) + site(p[16:20])), true
}

func (d *delayer) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := d.tun.Read(buf)
		if err != nil {
			return // closed
		}
		hold, ok := d.delayOf(buf[:n])
		if !ok {
			continue // not IPv4 between sites (the device's own IPv6 chatter)
		}
		p := packet{due: time.Now().Add(hold), data: append([]byte(nil), buf[:n]...)}
		d.mu.Lock()
		if d.qBytes+n > queueBytes {
			d.mu.Unlock()
			d.dropped.Add(1)
			continue
		}
		d.seq++
		p.seq = d.seq
		heap.Push(&d.q, p)
		d.qBytes += n
		d.mu.Unlock()
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

func (d *delayer) write() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d.mu.Lock()
		var wait time.Duration = -1
		var out []byte
		if len(d.q) > 0 {
			if w := time.Until(d.q[0].due); w > 0 {
				wait = w
			} else {
				p := heap.Pop(&d.q).(packet)
				d.qBytes -= len(p.data)
				out = p.data
			}
		}
		d.mu.Unlock()
		if out != nil {
			if _, err := d.tun.Write(out); err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		var tc <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			tc = timer.C
		}
		select {
		case <-d.done:
			return
		case <-d.wake:
		case <-tc:
		}
	}
}

func (d *delayer) close() {
	close(d.done)
	d.tun.Close()
	d.wg.Wait()
}
