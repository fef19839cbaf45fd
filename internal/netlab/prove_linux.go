package netlab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tolerances of Prove, said once. A cap is proven with UDP offered above
// it (MeasureCap): what arrives is the cap times CapShare (payload over
// frame), minus the loss the link applies after the cap. It may exceed
// that by 5 % (the span is timed by arrival stamps; behind the delaying
// forwarder they carry its scheduling jitter, a few ms of a 1.5 s span),
// and must reach 85 % of it (a
// receiver that a busy shared machine deschedules may miss datagrams; a
// missing or wrong cap is far outside). A round trip can
// never be shorter than the configured delays (1 ms for timer slack) and
// its median may exceed them by 15 ms + 20 %. Loss is a binomial count:
// within 4 standard deviations + 1 point of the configured percentage.
const (
	rateHigh     = 1.05
	rateLow      = 0.85
	rttSlackAbs  = 15 * time.Millisecond
	rttSlackRel  = 0.20
	lossSigmas   = 4
	rateWarmup   = 500 * time.Millisecond
	rateMeasure  = 1500 * time.Millisecond
	echoSamples  = 15
	lossProbes   = 1500
	lossProbeLen = 64
)

// MeasureRate sends TCP data from one site to another for about two
// seconds (longer on a delayed link) and returns the receiver's goodput in
// bits per second, measured after a warm-up (slow start, the tbf burst).
func MeasureRate(ctx context.Context, from, to *Site) (int64, error) {
	ln, err := to.Listen("tcp", netip.AddrPortFrom(to.Addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var stop atomic.Bool
	sendErr := make(chan error, 1)
	go func() {
		c, err := from.Dial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			sendErr <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for !stop.Load() {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(buf); err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	c, err := accept(ctx, ln)
	if err != nil {
		stop.Store(true)
		return 0, errors.Join(err, <-sendErr)
	}
	defer c.Close()
	// Slow start needs some round trips to fill a delayed link.
	rtt := 2 * (from.Shaped().Delay + to.Shaped().Delay)
	warmup, measure := max(rateWarmup, 10*rtt), max(rateMeasure, 10*rtt)
	buf := make([]byte, 64<<10)
	var n int64
	var start time.Time
	t0 := time.Now()
	for {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, err := c.Read(buf)
		now := time.Now()
		if err != nil {
			stop.Store(true)
			return 0, errors.Join(fmt.Errorf("netlab: rate probe read: %w", err), <-sendErr)
		}
		if start.IsZero() {
			if now.Sub(t0) >= warmup {
				start = now
			}
			continue
		}
		n += int64(m)
		if el := now.Sub(start); el >= measure {
			stop.Store(true)
			c.Close()
			<-sendErr // it may fail now that the receiver closed: that is the end
			return int64(float64(n*8) / el.Seconds()), nil
		}
	}
}

// capProbeLen is the payload of a cap probe datagram; on the wire it is
// capProbeLen + 8 (UDP) + 20 (IP) + 14 (Ethernet) bytes, which is what tbf
// counts.
const capProbeLen = 1200

// CapShare is the part of a capped link's rate that cap probes' payload
// can use: payload over frame.
const CapShare = float64(capProbeLen) / (capProbeLen + 8 + 20 + 14)

// MeasureCap offers UDP datagrams from one site to another at 1.3 × bits
// per second of frames for about two seconds and returns the payload rate
// that arrived (bits/s), measured after a warm-up that drains the tbf
// burst. Unlike a TCP transfer it shows the link's cap itself, whatever
// the round trip or the loss does to congestion control: through a cap
// of R, the result is R × CapShare (less the link's loss when the loss
// comes after the cap).
func MeasureCap(ctx context.Context, from, to *Site, bits int64) (int64, error) {
	rc, err := to.ListenPacket("udp", netip.AddrPortFrom(to.Addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if err := forceBuffer(rc.(*net.UDPConn), syscall.SO_RCVBUFFORCE, 8<<20); err != nil {
		return 0, err
	}
	sc, err := from.Dial(ctx, "udp", rc.LocalAddr().String())
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	// A capped sender's datagrams wait in its own tbf queue, charged to
	// this socket: with the default send buffer (~200 KiB, 26 ms at
	// 64 Mbit/s) a sender descheduled for longer lets the queue run dry.
	if err := forceBuffer(sc.(*net.UDPConn), syscall.SO_SNDBUFFORCE, 8<<20); err != nil {
		return 0, err
	}
	type result struct {
		bytes int64
		span  time.Duration
	}
	// Arrival times are the kernel's (SO_TIMESTAMPNS), not the reader's:
	// a reader descheduled for a while would otherwise start or end the
	// span late and count a backlog as if it had arrived inside it.
	if err := setTimestamps(rc.(*net.UDPConn)); err != nil {
		return 0, err
	}
	got := make(chan result, 1)
	go func() {
		buf, oob := make([]byte, 2*capProbeLen), make([]byte, 128)
		var n int64
		var first, last time.Time
		start := time.Now()
		for {
			rc.SetReadDeadline(time.Now().Add(time.Second))
			m, oobn, _, _, err := rc.(*net.UDPConn).ReadMsgUDP(buf, oob)
			if err != nil {
				got <- result{n, last.Sub(first)}
				return
			}
			at, ok := arrival(oob[:oobn])
			if !ok || at.Sub(start) < rateWarmup {
				continue
			}
			if first.IsZero() {
				first = at // the bytes of this datagram arrived before the span
				continue
			}
			n += int64(m)
			if at.After(last) {
				last = at
			}
		}
	}()
	pkt := make([]byte, capProbeLen)
	frame := float64(capProbeLen + 8 + 20 + 14)
	perSecond := 1.3 * float64(bits) / 8 / frame // datagrams per second
	start := time.Now()
	sent := 0
	for el := time.Duration(0); el < rateWarmup+rateMeasure; el = time.Since(start) {
		for due := int(el.Seconds() * perSecond); sent < due; sent++ {
			if _, err := sc.Write(pkt); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				return 0, fmt.Errorf("netlab: cap probe send: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	r := <-got // the reader stops a second after the last datagram
	if r.span <= 0 {
		return 0, fmt.Errorf("netlab: cap probe: nothing arrived after the warm-up")
	}
	return int64(float64(r.bytes*8) / r.span.Seconds()), nil
}

// setTimestamps asks the kernel to stamp each datagram's arrival.
func setTimestamps(c *net.UDPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("netlab: SO_TIMESTAMPNS: %w", serr)
	}
	return nil
}

// arrival reads the SCM_TIMESTAMPNS control message (a struct timespec of
// two 64-bit words on the 64-bit platforms the lab runs on).
func arrival(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}

// forceBuffer gives a UDP socket a receive (SO_RCVBUFFORCE) or send
// (SO_SNDBUFFORCE) buffer of n bytes past the sysctl maximum (root), so
// that a briefly descheduled reader or writer changes nothing.
func forceBuffer(c *net.UDPConn, opt, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("netlab: socket buffer: %w", serr)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func accept(ctx context.Context, ln net.Listener) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok {
		ln.(*net.TCPListener).SetDeadline(d)
	} else {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	}
	return ln.Accept()
}

// MeasureRTT times echoSamples round trips of a small message over one
// TCP connection from one site to another; it returns the minimum and the
// median.
func MeasureRTT(ctx context.Context, from, to *Site) (minRTT, median time.Duration, err error) {
	ln, err := to.Listen("tcp", netip.AddrPortFrom(to.Addr, 0).String())
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	go func() {
		c, err := accept(ctx, ln)
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := from.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	msg, back := make([]byte, 16), make([]byte, 16)
	var rtts []time.Duration
	for i := 0; i < echoSamples; i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, fmt.Errorf("netlab: echo write: %w", err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return 0, 0, fmt.Errorf("netlab: echo read: %w", err)
		}
		rtts = append(rtts, time.Since(t))
	}
	slices.Sort(rtts)
	return rtts[0], rtts[len(rtts)/2], nil
}

// MeasureLoss sends lossProbes numbered UDP datagrams from one site to
// another, paced so that no queue overflows, and returns the fraction that
// never arrived.
func MeasureLoss(ctx context.Context, from, to *Site) (float64, error) {
	rc, err := to.ListenPacket("udp", netip.AddrPortFrom(to.Addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	sc, err := from.Dial(ctx, "udp", rc.LocalAddr().String())
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	seen := make([]bool, lossProbes)
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 2*lossProbeLen)
		n := 0
		for {
			m, _, err := rc.ReadFrom(buf)
			if err != nil {
				got <- n
				return
			}
			if m == lossProbeLen {
				if i := binary.BigEndian.Uint32(buf); int(i) < lossProbes && !seen[i] {
					seen[i] = true
					n++
				}
			}
		}
	}()
	// Paced at half the tighter cap at most (a probe of IP+UDP+Ethernet
	// headers and payload), so that loss is the configured loss, not a full
	// tbf queue.
	gap := 200 * time.Microsecond
	for _, r := range []int64{from.Shaped().Rate, to.Shaped().Rate} {
		if r > 0 {
			gap = max(gap, time.Duration(2*(lossProbeLen+42)*8*float64(time.Second)/float64(r)))
		}
	}
	pkt := make([]byte, lossProbeLen)
	for i := 0; i < lossProbes; i++ {
		binary.BigEndian.PutUint32(pkt, uint32(i))
		if _, err := sc.Write(pkt); err != nil {
			rc.Close()
			<-got
			return 0, fmt.Errorf("netlab: loss probe send: %w", err)
		}
		if i%25 == 24 {
			time.Sleep(25 * gap)
		}
	}
	// Everything still in flight arrives within the delays plus a margin.
	hold := 2*time.Duration(from.Shaped().Delay+to.Shaped().Delay) + 300*time.Millisecond
	select {
	case <-time.After(hold):
	case <-ctx.Done():
	}
	rc.Close()
	n := <-got
	return 1 - float64(n)/lossProbes, nil
}

// Proof is what Prove measured between two sites.
type Proof struct {
	A, B                   string // the sites
	RateAB, RateBA         int64  // payload bits/s that MeasureCap saw arrive; 0 when neither end is capped
	MinRTT, MedianRTT      time.Duration
	LossAB, LossBA         float64
	WantRate               int64
	WantRTT                time.Duration
	WantLossAB, WantLossBA float64
}

// Prove measures the link between sites a and b and fails the test when
// what it measured is not what the two sites' shapes configure (tolerances
// above). It returns the measurements so that a test can report them.
func (l *Lab) Prove(t testing.TB, a, b string) Proof {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := l.Measure(ctx, a, b)
	if err != nil {
		t.Fatalf("netlab: measuring %s↔%s: %v", a, b, err)
	}
	t.Log(p.String())
	if err := p.Check(); err != nil {
		t.Fatalf("netlab: the lab does not do what it was told between %s and %s: %v", a, b, err)
	}
	return p
}

// Measure measures the link between sites a and b: round trip, loss each
// way and, when either end is capped, goodput each way. Check compares
// the result with the configuration.
func (l *Lab) Measure(ctx context.Context, a, b string) (Proof, error) {
	sa, err := l.Lookup(a)
	if err != nil {
		return Proof{}, err
	}
	sb, err := l.Lookup(b)
	if err != nil {
		return Proof{}, err
	}
	ha, hb := sa.Shaped(), sb.Shaped()
	p := Proof{
		A: a, B: b,
		WantRTT:    2 * (ha.Delay + hb.Delay),
		WantLossAB: 1 - (1-float64(ha.Loss)/100)*(1-float64(hb.Loss)/100),
	}
	p.WantLossBA = p.WantLossAB // each site's loss applies to both of its directions
	if p.MinRTT, p.MedianRTT, err = MeasureRTT(ctx, sa, sb); err != nil {
		return p, fmt.Errorf("RTT: %w", err)
	}
	if p.LossAB, err = MeasureLoss(ctx, sa, sb); err != nil {
		return p, fmt.Errorf("loss %s→%s: %w", a, b, err)
	}
	if p.LossBA, err = MeasureLoss(ctx, sb, sa); err != nil {
		return p, fmt.Errorf("loss %s→%s: %w", b, a, err)
	}
	for _, r := range []int64{ha.Rate, hb.Rate} {
		if r > 0 && (p.WantRate == 0 || r < p.WantRate) {
			p.WantRate = r
		}
	}
	if p.WantRate > 0 {
		if p.RateAB, err = MeasureCap(ctx, sa, sb, p.WantRate); err != nil {
			return p, fmt.Errorf("rate %s→%s: %w", a, b, err)
		}
		if p.RateBA, err = MeasureCap(ctx, sb, sa, p.WantRate); err != nil {
			return p, fmt.Errorf("rate %s→%s: %w", b, a, err)
		}
	}
	return p, nil
}

// String says what was measured and what was configured.
func (p Proof) String() string {
	return fmt.Sprintf("netlab %s↔%s: rate %s / %s (cap %s of frames), RTT min %v median %v (want %v), loss %.1f%% / %.1f%% (want %.1f%%)",
		p.A, p.B, mbit(p.RateAB), mbit(p.RateBA), mbit(p.WantRate), p.MinRTT.Round(100*time.Microsecond),
		p.MedianRTT.Round(100*time.Microsecond), p.WantRTT, 100*p.LossAB, 100*p.LossBA, 100*p.WantLossAB)
}

// Check compares the measurements with the configuration, within the
// tolerances above.
func (p Proof) Check() error {
	var errs []error
	if p.WantRate > 0 {
		want := float64(p.WantRate) * CapShare
		for _, m := range []struct {
			got  int64
			loss float64
		}{{p.RateAB, p.WantLossAB}, {p.RateBA, p.WantLossBA}} {
			if float64(m.got) > rateHigh*want {
				errs = append(errs, fmt.Errorf("%s arrived through a cap of %s (at most %s expected)", mbit(m.got), mbit(p.WantRate), mbit(int64(want))))
			}
			if low := rateLow * want * (1 - m.loss); float64(m.got) < low {
				errs = append(errs, fmt.Errorf("only %s arrived through a cap of %s (at least %s expected)", mbit(m.got), mbit(p.WantRate), mbit(int64(low))))
			}
		}
	}
	if p.MinRTT < p.WantRTT-time.Millisecond {
		errs = append(errs, fmt.Errorf("round trip %v shorter than the configured %v", p.MinRTT, p.WantRTT))
	}
	if limit := p.WantRTT + rttSlackAbs + time.Duration(rttSlackRel*float64(p.WantRTT)); p.MedianRTT > limit {
		errs = append(errs, fmt.Errorf("median round trip %v above %v", p.MedianRTT, limit))
	}
	for _, pair := range [][2]float64{{p.LossAB, p.WantLossAB}, {p.LossBA, p.WantLossBA}} {
		sigma := math.Sqrt(pair[1] * (1 - pair[1]) / lossProbes)
		if math.Abs(pair[0]-pair[1]) > lossSigmas*sigma+0.01 {
			errs = append(errs, fmt.Errorf("loss %.2f%%, configured %.2f%%", 100*pair[0], 100*pair[1]))
		}
	}
	return errors.Join(errs...)
}

func mbit(bits int64) string { return fmt.Sprintf("%.1f Mbit/s", float64(bits)/1e6) }
