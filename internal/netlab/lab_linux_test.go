package netlab

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLabProvesItsSettings: a clean link, then a capped, delayed and lossy
// one: each time the lab measures what it was told (rate, round trip,
// loss, within Prove's tolerances).
func TestLabProvesItsSettings(t *testing.T) {
	l := New(t, "a", "b", "c")
	clean := l.Prove(t, "a", "b")
	require.Less(t, clean.MedianRTT, 5*time.Millisecond, "a clean link is fast")
	require.Zero(t, clean.LossAB)

	require.NoError(t, l.Site("a").Shape(Shape{Rate: 40_000_000, Delay: 20 * time.Millisecond}))
	require.NoError(t, l.Site("b").Shape(Shape{Delay: 30 * time.Millisecond}))
	p := l.Prove(t, "a", "b")
	require.Equal(t, 100*time.Millisecond, p.WantRTT)
	require.Equal(t, int64(40_000_000), p.WantRate)
	// The same measurements do not pass for another configuration: the
	// proof can fail.
	for name, wrong := range map[string]func(*Proof){
		"cap 20 Mbit/s": func(q *Proof) { q.WantRate = 20_000_000 },
		"cap 80 Mbit/s": func(q *Proof) { q.WantRate = 80_000_000 },
		"RTT 50 ms":     func(q *Proof) { q.WantRTT = 50 * time.Millisecond },
		"RTT 200 ms":    func(q *Proof) { q.WantRTT = 200 * time.Millisecond },
		"loss 5 %":      func(q *Proof) { q.WantLossAB = 0.05 },
		"loss 5 % back": func(q *Proof) { q.WantLossBA = 0.05 },
	} {
		q := p
		wrong(&q)
		require.Error(t, q.Check(), "measurements of a 40 Mbit/s, 100 ms link pass as %s", name)
	}

	// c is untouched: a↔c has a's delay only, b↔c... b's.
	pc := l.Prove(t, "b", "c")
	require.Equal(t, 60*time.Millisecond, pc.WantRTT)

	require.NoError(t, l.Site("a").Shape(Shape{Loss: 10}))
	require.NoError(t, l.Site("b").Shape(Shape{}))
	pl := l.Prove(t, "a", "b")
	require.InDelta(t, 0.10, pl.WantLossAB, 1e-9)
	pl.WantLossAB, pl.WantLossBA = 0, 0
	require.Error(t, pl.Check(), "10 %% loss does not pass as a clean link")
}

// TestLabCutIsAPartition: a cut site's established connection goes silent
// in both directions and new connections fail; after Heal the same
// connection carries data again. The counters see nothing cross meanwhile.
func TestLabCutIsAPartition(t *testing.T) {
	l := New(t, "a", "b")
	a, b := l.Site("a"), l.Site("b")
	ln, err := b.Listen("tcp", b.Addr.String()+":0")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := a.Dial(ctx, "tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	s, err := ln.Accept()
	require.NoError(t, err)
	defer s.Close()

	echo := func(timeout time.Duration) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		s.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 4)
		_, err := s.Read(buf)
		return err
	}
	require.NoError(t, echo(5*time.Second))

	require.NoError(t, a.Cut())
	cut, err := a.IsCut()
	require.NoError(t, err)
	require.True(t, cut)
	before, err := a.Traffic()
	require.NoError(t, err)
	err = echo(time.Second)
	require.True(t, isTimeout(err), "a cut link is silent, not reset: %v", err)
	dctx, dcancel := context.WithTimeout(ctx, time.Second)
	_, err = a.Dial(dctx, "tcp", ln.Addr().String())
	dcancel()
	require.Error(t, err, "no new connection across a cut")
	after, err := a.Traffic()
	require.NoError(t, err)
	require.Equal(t, before, after, "nothing crossed the cut")

	require.NoError(t, a.Heal())
	// TCP retransmits the bytes the cut swallowed; the next read gets them.
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 8)
	_, err = s.Read(buf)
	require.NoError(t, err, "the same connection works again after Heal")
	healed, err := a.Traffic()
	require.NoError(t, err)
	require.Greater(t, healed.From.Bytes, after.From.Bytes)
}

// BenchmarkDelayedLinkGoodput: TCP goodput through the delaying forwarder
// (1 ms each way, no cap): the ceiling of any cap combined with a delay.
func BenchmarkDelayedLinkGoodput(b *testing.B) {
	l := New(b, "a", "b")
	require.NoError(b, l.Site("a").Shape(Shape{Delay: time.Millisecond}))
	for b.Loop() {
		r, err := MeasureRate(context.Background(), l.Site("a"), l.Site("b"))
		require.NoError(b, err)
		b.ReportMetric(float64(r)/1e6, "Mbit/s")
	}
}

// BenchmarkDirectLinkGoodput: the same without delay (veth and the
// router only).
func BenchmarkDirectLinkGoodput(b *testing.B) {
	l := New(b, "a", "b")
	for b.Loop() {
		r, err := MeasureRate(context.Background(), l.Site("a"), l.Site("b"))
		require.NoError(b, err)
		b.ReportMetric(float64(r)/1e6, "Mbit/s")
	}
}

// TestLabUnknownSite: asking for a site the lab does not have is
// ErrUnknownSite; Build refuses an empty lab.
func TestLabUnknownSite(t *testing.T) {
	l := New(t, "a")
	_, err := l.Lookup("nowhere")
	require.ErrorIs(t, err, ErrUnknownSite)
	require.Error(t, l.Site("a").Shape(Shape{Loss: 101}))
	_, err = Build()
	require.Error(t, err)
}

// TestLabBlackholeKeepsOldConnectionsDead: after Blackhole of a
// connection's port, that connection is silent while a new connection
// between the same sites works; Unblackhole brings it back.
func TestLabBlackholeKeepsOldConnectionsDead(t *testing.T) {
	l := New(t, "a", "b")
	a, b := l.Site("a"), l.Site("b")
	ln, err := b.Listen("tcp", b.Addr.String()+":0")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, err := a.Dial(ctx, "tcp", ln.Addr().String())
	require.NoError(t, err)
	defer old.Close()
	oldSrv, err := ln.Accept()
	require.NoError(t, err)
	defer oldSrv.Close()
	port := uint16(old.LocalAddr().(*net.TCPAddr).Port)

	require.NoError(t, a.Blackhole(port))
	_, err = old.Write([]byte("x"))
	require.NoError(t, err)
	oldSrv.SetReadDeadline(time.Now().Add(time.Second))
	_, err = oldSrv.Read(make([]byte, 1))
	require.True(t, isTimeout(err), "the blackholed connection is silent: %v", err)

	fresh, err := a.Dial(ctx, "tcp", ln.Addr().String())
	require.NoError(t, err, "a new connection passes")
	defer fresh.Close()
	srv, err := ln.Accept()
	require.NoError(t, err)
	defer srv.Close()
	_, err = fresh.Write([]byte("y"))
	require.NoError(t, err)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = srv.Read(make([]byte, 1))
	require.NoError(t, err)

	require.NoError(t, a.Unblackhole(port))
	oldSrv.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = oldSrv.Read(make([]byte, 1))
	require.NoError(t, err, "the old connection delivers after Unblackhole")
}
