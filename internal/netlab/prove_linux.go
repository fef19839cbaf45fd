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
	"testing"
	"time"
)

// Tolerances of Prove, said once. A cap is an upper bound the kernel
// enforces, so the measured goodput may not exceed it by more than 5 %
// (tbf counts Ethernet frames, goodput is TCP payload, about 95.6 % of a
// full frame); it must reach 70 % of it, which leaves room for a busy
// shared machine but not for a missing or wrong cap. A round trip can
// never be shorter than the configured delays (1 ms for timer slack) and
// its median may exceed them by 15 ms + 20 %. Loss is a binomial count:
// within 4 standard deviations + 1 point of the configured percentage.
const (
	rateHigh     = 1.05
	rateLow      = 0.70
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
	RateAB, RateBA         int64 // bits/s; 0 when neither end is capped
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
	sa, sb := l.Site(a), l.Site(b)
	ha, hb := sa.Shaped(), sb.Shaped()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := Proof{
		WantRTT:    2 * (ha.Delay + hb.Delay),
		WantLossAB: 1 - (1-float64(ha.Loss)/100)*(1-float64(hb.Loss)/100),
	}
	p.WantLossBA = p.WantLossAB // each site's loss applies to both of its directions
	var err error
	p.MinRTT, p.MedianRTT, err = MeasureRTT(ctx, sa, sb)
	if err != nil {
		t.Fatalf("netlab: prove %s↔%s RTT: %v", a, b, err)
	}
	if p.LossAB, err = MeasureLoss(ctx, sa, sb); err != nil {
		t.Fatalf("netlab: prove %s→%s loss: %v", a, b, err)
	}
	if p.LossBA, err = MeasureLoss(ctx, sb, sa); err != nil {
		t.Fatalf("netlab: prove %s→%s loss: %v", b, a, err)
	}
	for _, r := range []int64{ha.Rate, hb.Rate} {
		if r > 0 && (p.WantRate == 0 || r < p.WantRate) {
			p.WantRate = r
		}
	}
	if p.WantRate > 0 {
		if p.RateAB, err = MeasureRate(ctx, sa, sb); err != nil {
			t.Fatalf("netlab: prove %s→%s rate: %v", a, b, err)
		}
		if p.RateBA, err = MeasureRate(ctx, sb, sa); err != nil {
			t.Fatalf("netlab: prove %s→%s rate: %v", b, a, err)
		}
	}
	t.Logf("netlab %s↔%s: rate %s / %s (cap %s), RTT min %v median %v (want %v), loss %.1f%% / %.1f%% (want %.1f%%)",
		a, b, mbit(p.RateAB), mbit(p.RateBA), mbit(p.WantRate), p.MinRTT.Round(100*time.Microsecond),
		p.MedianRTT.Round(100*time.Microsecond), p.WantRTT, 100*p.LossAB, 100*p.LossBA, 100*p.WantLossAB)
	if err := p.check(); err != nil {
		t.Fatalf("netlab: the lab does not do what it was told between %s and %s: %v", a, b, err)
	}
	return p
}

// check compares the measurements with the tolerances.
func (p Proof) check() error {
	var errs []error
	if p.WantRate > 0 {
		lossy := p.WantLossAB > 0 // TCP cannot fill a lossy link: only the cap is checked then
		for _, r := range []int64{p.RateAB, p.RateBA} {
			if float64(r) > rateHigh*float64(p.WantRate) {
				errs = append(errs, fmt.Errorf("goodput %s above the cap %s", mbit(r), mbit(p.WantRate)))
			}
			if !lossy && float64(r) < rateLow*float64(p.WantRate) {
				errs = append(errs, fmt.Errorf("goodput %s below %.0f%% of the cap %s", mbit(r), 100*rateLow, mbit(p.WantRate)))
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
