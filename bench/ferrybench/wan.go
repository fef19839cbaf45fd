package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/ferrydr/ferry/internal/netlab"
)

// wanLink is the network of a WAN case: two sites of a network lab
// (internal/netlab), "agent" and "controller", each shaped to the case's
// rate with a quarter of its round trip as delay (a round trip between two
// sites is twice the sum of their delays). A rig with a wanLink runs the
// agent in one site and the controller in the other; the lab's router
// counts the bytes.
type wanLink struct {
	lab        *netlab.Lab
	agent, ctl *netlab.Site
	rate       int64         // bit/s, each direction
	rtt        time.Duration // agent ↔ controller
	// base is the agent site's counters when the current rig started;
	// last is the latest reading (kept when a reading fails).
	base, last netlab.Traffic
}

// buildWAN builds and shapes the lab. It fails, with what is missing,
// where a lab cannot be built.
func buildWAN(rate int64, rtt time.Duration) (*wanLink, error) {
	if err := requireTools("ip", "tc", "nft", "nsenter"); err != nil {
		return nil, fmt.Errorf("a WAN case needs a network lab (internal/netlab: root, ip, tc, nft, and nsenter to run processes in its sites): %w", err)
	}
	lab, err := netlab.Build("agent", "controller")
	if err != nil {
		if lab != nil {
			err = errors.Join(err, lab.Close())
		}
		return nil, fmt.Errorf("build the network lab: %w", err)
	}
	w := &wanLink{lab: lab, agent: lab.Site("agent"), ctl: lab.Site("controller"), rate: rate, rtt: rtt}
	for _, s := range []*netlab.Site{w.agent, w.ctl} {
		if err := s.Shape(netlab.Shape{Rate: rate, Delay: rtt / 4}); err != nil {
			return nil, errors.Join(fmt.Errorf("shape site %s: %w", s.Name, err), lab.Close())
		}
	}
	return w, nil
}

func (w *wanLink) close() error { return w.lab.Close() }

// inSite is the command line that runs bin in the network namespace of a
// lab site (site nil: here). It enters the network namespace only, with
// nsenter: `ip netns exec` (Site.Command) also mounts a sysfs of its own,
// which hides tracefs from an agent run with --track-writes.
func inSite(site *netlab.Site, bin string, args ...string) (string, []string) {
	if site == nil {
		return bin, args
	}
	return "nsenter", append([]string{"--net=/run/netns/" + site.NS, "--", bin}, args...)
}

// listen is the controller's listen address: the controller site's
// address on a WAN rig, the loopback otherwise.
func (w *wanLink) listen() string {
	if w == nil {
		return "127.0.0.1:0"
	}
	return netip.AddrPortFrom(w.ctl.Addr, 0).String()
}

// agentCmd and ctlCmd run a Ferry binary in the agent's or the
// controller's site (w nil: here).
func (w *wanLink) agentCmd(bin string, args ...string) (string, []string) {
	if w == nil {
		return bin, args
	}
	return inSite(w.agent, bin, args...)
}

func (w *wanLink) ctlCmd(bin string, args ...string) (string, []string) {
	if w == nil {
		return bin, args
	}
	return inSite(w.ctl, bin, args...)
}

// startCounting makes wire count from now (a rig's start).
func (w *wanLink) startCounting() error {
	t, err := w.agent.Traffic()
	if err != nil {
		return err
	}
	w.base, w.last = t, t
	return nil
}

// wire is what crossed the router from and to the agent's site since
// startCounting (IP packets: headers and retransmissions included), both
// directions and agent → controller. A failed reading repeats the last.
func (w *wanLink) wire() (total, up int64) {
	if t, err := w.agent.Traffic(); err == nil {
		w.last = t
	}
	from, to := w.last.From.Bytes-w.base.From.Bytes, w.last.To.Bytes-w.base.To.Bytes
	return from + to, from
}

// wanProof is what the lab measured of a WAN case's link before the runs.
type wanProof struct {
	netlab.Proof       // round trip (MeasureRTT), cap each way (MeasureCap), loss
	goodput      int64 // TCP agent → controller, bit/s (MeasureRate)
}

// measure measures the link once and fails when it is not what the case
// claims (netlab's tolerances), so that no figure is reported for a link
// that was not shaped.
func (w *wanLink) measure(ctx context.Context) (wanProof, error) {
	p, err := w.lab.Measure(ctx, w.agent.Name, w.ctl.Name)
	if err != nil {
		return wanProof{}, fmt.Errorf("measuring the link: %w", err)
	}
	if err := p.Check(); err != nil {
		return wanProof{}, fmt.Errorf("the link is not what the case claims (%s): %w", p, err)
	}
	g, err := netlab.MeasureRate(ctx, w.agent, w.ctl)
	if err != nil {
		return wanProof{}, fmt.Errorf("measuring TCP goodput: %w", err)
	}
	return wanProof{Proof: p, goodput: g}, nil
}

// describe is the report's line on the link.
func (p wanProof) describe(w *wanLink) string {
	return fmt.Sprintf("link agent ↔ controller as the lab measured it before the runs: TCP goodput agent → controller %.1f Mbit/s (`netlab.MeasureRate`); UDP offered above the cap arrived at %.1f / %.1f Mbit/s of payload each way (`MeasureCap`; cap %.0f Mbit/s of frames, %.1f Mbit/s of such payload); round trip min %s, median %s (`MeasureRTT`; configured %s); loss %.1f%% / %.1f%%",
		float64(p.goodput)/1e6, float64(p.RateAB)/1e6, float64(p.RateBA)/1e6, float64(w.rate)/1e6, float64(w.rate)*netlab.CapShare/1e6,
		p.MinRTT.Round(100*time.Microsecond), p.MedianRTT.Round(100*time.Microsecond), w.rtt, 100*p.LossAB, 100*p.LossBA)
}

// zstdPush times `zstd -q -1 -T2 -c img` piped into a TCP connection from
// the agent's site to a sink in the controller's site that reads to EOF:
// from zstd's start (the connection is already open) to the sink's EOF.
// It returns the time and the bytes the sink read.
func (w *wanLink) zstdPush(ctx context.Context, img string) (time.Duration, int64, error) {
	ln, err := w.ctl.Listen("tcp", netip.AddrPortFrom(w.ctl.Addr, 0).String())
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	type sunk struct {
		n   int64
		at  time.Time
		err error
	}
	got := make(chan sunk, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- sunk{err: err}
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		got <- sunk{n: n, at: time.Now(), err: err}
	}()
	c, err := w.agent.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	cmd := exec.CommandContext(ctx, "zstd", "-q", "-1", "-T2", "-c", "--", img)
	var errb strings.Builder
	cmd.Stdout, cmd.Stderr = c, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, &CmdError{Cmd: "zstd -q -1 -T2 -c " + img + " > tcp", Output: errb.String(), Err: err}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, 0, err
	}
	select {
	case s := <-got:
		if s.err != nil {
			return 0, 0, fmt.Errorf("zstd push sink: %w", s.err)
		}
		return s.at.Sub(start), s.n, nil
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

// measuredWAN builds a lab joined by a rate, rtt link and measures the
// link once; the caller closes the lab (also when measuring failed, it is
// closed here).
func (b *bench) measuredWAN(ctx context.Context, rate int64, rtt time.Duration) (*wanLink, wanProof, error) {
	w, err := buildWAN(rate, rtt)
	if err != nil {
		return nil, wanProof{}, err
	}
	proof, err := w.measure(ctx)
	if err != nil {
		return nil, wanProof{}, errors.Join(err, w.close())
	}
	b.log.Info("WAN link measured", "link", proof.String(), "tcp_Mbit", proof.goodput/1e6)
	return w, proof, nil
}
