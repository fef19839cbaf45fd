package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/pgtest"
)

// pgtrackPair is two pgbench runs side by side: a and b tps.
type pgtrackPair struct{ a, b float64 }

// pgtrackResult is what the tracker-overhead case measured.
type pgtrackResult struct {
	tracker     []pgtrackPair // a: no tracker, b: the tracker alone
	replicating []pgtrackPair // a: the agent's tracker, no cycle; b: a cycle every rp-every
	use         rigUsage      // the rig's processes during the replicating runs
	useFor      time.Duration
	frozen      []float64 // seconds frozen, per tracked-freeze point of the replicating runs
	methods     map[string]int
	points      int // points committed during the replicating runs
}

// casePGTrack measures what tracking and freezing a database's block
// device costs the database: PostgreSQL on ext4 on a whole loop device,
// pgbench (TPC-B-like) runs of cfg.PGFor. The machine is shared and its
// speed drifts, so each comparison is made of pairs of runs back to back,
// in alternating order, and the row is the median of the per-pair ratios:
//
//   - the tracker alone: runs without and with the eBPF tracker attached
//     to the device (agent/bdtrack, opened and removed by this process);
//   - replicating: an agent (--track-writes) protects the device as a
//     block device; runs with its policy making no cycle (its tracker
//     attached) and with a cycle every cfg.RPEvery (tracked freezes, the
//     dirty blocks read, shipped and stored).
//
// Their product is replicating against no tracker at all.
func (b *bench) casePGTrack(ctx context.Context) (err error) {
	if why := pgtest.Missing(); why != "" {
		return errors.New(why)
	}
	m, err := makeLoopMount(ctx, "ext4", filepath.Join(b.work, "pg.img"), filepath.Join(b.work, "mnt", "pg"), 1<<30)
	if err != nil {
		return err
	}
	defer func() {
		bdtrack.RemovePinned(m.Dev, bdtrack.Options{})
		err = errors.Join(err, m.close(context.WithoutCancel(ctx)))
	}()
	sock, logs := filepath.Join(b.work, "pgsock"), filepath.Join(b.work, "logs", "pgtrack")
	for _, d := range []string{sock, logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{m.Dir, sock, logs} {
		if err := pgtest.Traversable(d); err != nil {
			return err
		}
	}
	c := &pgtest.Cluster{Data: filepath.Join(m.Dir, "data"), Sock: sock, Port: 55450, Log: filepath.Join(logs, "postgres.log")}
	if err := c.Init(ctx); err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Stop(context.WithoutCancel(ctx), "fast")
	b.log.Info("pgtrack: pgbench -i", "scale", b.cfg.PGScale)
	if err := c.BenchInit(ctx, b.cfg.PGScale); err != nil {
		return err
	}
	// A first run, not counted: the tables freshly loaded are read into
	// shared buffers, and the first run would be slower than the others
	// whatever comes next.
	if _, err := b.pgbench(ctx, c); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var res pgtrackResult
	if res.tracker, err = b.pgtrackPairs(ctx, c, "tracker", nil, func() (func() error, error) {
		t, err := bdtrack.Open(m.Dev, 4096, bdtrack.Options{})
		if err != nil {
			return nil, err
		}
		return t.Remove, nil
	}); err != nil {
		return err
	}
	if err := b.pgtrackReplicating(ctx, c, m.Dev, &res); err != nil {
		return err
	}
	b.pgtrackReport(res)
	return nil
}

// pgtrackPairs runs cfg.PGPairs pairs of pgbench runs: one in state a (after
// settleA, when given), one in state b (on() enters it and returns how to
// leave it), a first in odd pairs and last in even ones, so that a drift
// of the machine's speed weighs on both sides alike.
func (b *bench) pgtrackPairs(ctx context.Context, c *pgtest.Cluster, what string, settleA func() error, on func() (func() error, error)) ([]pgtrackPair, error) {
	var pairs []pgtrackPair
	for i := range b.cfg.PGPairs {
		var p pgtrackPair
		runA := func() (err error) {
			if settleA != nil {
				if err := settleA(); err != nil {
					return err
				}
			}
			p.a, err = b.pgbench(ctx, c)
			return err
		}
		runB := func() error {
			off, err := on()
			if err != nil {
				return err
			}
			p.b, err = b.pgbench(ctx, c)
			return errors.Join(err, off())
		}
		order := []func() error{runA, runB}
		if i%2 == 1 {
			order = []func() error{runB, runA}
		}
		for _, f := range order {
			if err := f(); err != nil {
				return nil, fmt.Errorf("%s pair %d: %w", what, i+1, err)
			}
		}
		b.log.Info("pgtrack: pair done", "what", what, "pair", i+1, "tps_a", p.a, "tps_b", p.b)
		pairs = append(pairs, p)
	}
	return pairs, nil
}

// pgtrackReplicating protects the device with a fresh controller and
// agent (--track-writes) whose policy makes no cycle but the first (the
// initial point, a direct read of the device, which starts the agent's
// tracker); then pairs of runs with that policy and with rp-every
// cfg.RPEvery. A run with cycles starts after a first tracked point; a run
// without starts once both processes are idle (the cycle in flight and
// the controller's checks of what it stored are over).
func (b *bench) pgtrackReplicating(ctx context.Context, c *pgtest.Cluster, dev string, res *pgtrackResult) error {
	dir, logs, err := b.runDir(b.xfs, "pgtrack")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{agentArgs: []string{"--track-writes"}, stall: b.cfg.Stall})
	if err != nil {
		return err
	}
	defer func() {
		r.close()
		bdtrack.RemovePinned(dev, bdtrack.Options{})
	}()
	const never = 24 * time.Hour
	if err := r.createPolicy(ctx, "p", never, b.cfg.BlockSize); err != nil {
		return err
	}
	if err := r.protect(ctx, "pg", dev, "p", ""); err != nil {
		return err
	}
	last, _, err := r.waitPoint(ctx, "pg", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return err
	}
	// Points made while a replicating run ran: after the one that ended
	// the wait, up to the newest when the run ends.
	var spans [][2]int64
	settleIdle := func() error { return r.waitIdle(ctx, 2*time.Minute) }
	var u0 rigUsage
	replicate := func() (func() error, error) {
		if err := r.setRPEvery(ctx, "p", b.cfg.RPEvery); err != nil {
			return nil, err
		}
		p, _, err := r.waitPoint(ctx, "pg", last.ID, b.cfg.Poll, time.Hour)
		if err != nil {
			return nil, err
		}
		if u0, err = r.usage(); err != nil {
			return nil, err
		}
		start := time.Now()
		return func() error {
			u1, err := r.usage()
			if err != nil {
				return err
			}
			res.use, res.useFor = res.use.add(u1.sub(u0)), res.useFor+time.Since(start)
			ps, err := r.cl.Points(ctx, "pg")
			if err != nil {
				return err
			}
			last = ps[len(ps)-1]
			spans = append(spans, [2]int64{p.ID, last.ID})
			return r.setRPEvery(ctx, "p", never)
		}, nil
	}
	if res.replicating, err = b.pgtrackPairs(ctx, c, "replicating", settleIdle, replicate); err != nil {
		return err
	}
	r.close()
	in := func(id int64) bool {
		return slices.ContainsFunc(spans, func(s [2]int64) bool { return id > s[0] && id <= s[1] })
	}
	made, err := r.logLines("agent", "point made")
	if err != nil {
		return err
	}
	res.methods = map[string]int{}
	for _, l := range made {
		if id, err := l.Int("point"); err == nil && in(id) {
			res.methods[l["method"]]++
		}
	}
	committed, err := r.logLines("controller", "point committed")
	if err != nil {
		return err
	}
	for _, l := range committed {
		if id, err := l.Int("point"); err != nil || !in(id) {
			continue
		}
		res.points++
		if m := frozenNote.FindStringSubmatch(l["reason"]); m != nil {
			ms, _ := strconv.Atoi(m[1])
			res.frozen = append(res.frozen, float64(ms)/1000)
		}
	}
	return nil
}

// pgbench runs one timed pgbench from the same start: a checkpoint, then
// a sync of every filesystem, so that no run inherits the previous one's
// dirty pages — the database's, nor those of Ferry's repository, whose
// writeback would otherwise land on the next run.
func (b *bench) pgbench(ctx context.Context, c *pgtest.Cluster) (float64, error) {
	if _, err := c.Query(ctx, "checkpoint"); err != nil {
		return 0, err
	}
	unix.Sync()
	res, err := c.Bench(ctx, pgtest.BenchOptions{Clients: 4, Threads: 2, Duration: b.cfg.PGFor})
	return res.TPS, err
}

// waitIdle waits until the controller and the agent together use less
// than 2% of a core over a second.
func (r *rig) waitIdle(ctx context.Context, timeout time.Duration) error {
	prev, err := r.usage()
	if err != nil {
		return err
	}
	return poll(ctx, timeout, time.Second, func() (bool, error) {
		u, err := r.usage()
		if err != nil {
			return false, err
		}
		d := u.sub(prev)
		prev = u
		return d.agent.CPU+d.ctl.CPU < 20*time.Millisecond, nil
	})
}

func (u rigUsage) add(v rigUsage) rigUsage {
	return rigUsage{agent: u.agent.add(v.agent), ctl: u.ctl.add(v.ctl), bench: u.bench.add(v.bench), machine: u.machine.add(v.machine)}
}

func (u usage) add(v usage) usage {
	return usage{CPU: u.CPU + v.CPU, ReadBytes: u.ReadBytes + v.ReadBytes, WriteBytes: u.WriteBytes + v.WriteBytes}
}

// pgtrackReport adds the rows and the details.
func (b *bench) pgtrackReport(res pgtrackResult) {
	a := func(p pgtrackPair) float64 { return p.a }
	bb := func(p pgtrackPair) float64 { return p.b }
	noTracker, tracker := column(res.tracker, a), column(res.tracker, bb)
	quiet, replicating := column(res.replicating, a), column(res.replicating, bb)
	trackerRow := row{Case: "pgbench tps, tracker on", Unit: unitTPS, Ferry: tracker, Anchor: noTracker, AnchorName: "no tracker",
		Target: 0.9, TargetText: "≥ 0.9 × no tracker", AtLeast: true,
		Note: "tps per pair, no tracker / tracker: " + runsText(unitTPS, noTracker) + " / " + runsText(unitTPS, tracker)}
	replRow := row{Case: fmt.Sprintf("pgbench tps, replicating every %s", b.cfg.RPEvery), Unit: unitTPS, Ferry: replicating, Anchor: quiet, AnchorName: "tracker, no cycle",
		Target: 0.9, TargetText: "≥ 0.9 × tracker, no cycle", AtLeast: true,
		Note: "tps per pair, no cycle / replicating: " + runsText(unitTPS, quiet) + " / " + runsText(unitTPS, replicating)}
	b.rows = append(b.rows, trackerRow, replRow)
	s := section{Title: "Tracker overhead (pgbench on a tracked block device)"}
	s.addf("- PostgreSQL %s, data directory on ext4 on a whole 1 GiB loop device (its backing file in -work); `pgbench -i -s %d` and a warm-up run; every run is `pgbench -c 4 -j 2 -T %d` (TPC-B-like) after a CHECKPOINT and a `sync`. Runs come in pairs back to back, in alternating order (the machine's speed drifts: other load, the tables growing); each row is the median of the per-pair ratios.",
		filepath.Base(filepath.Dir(pgtest.Bin())), b.cfg.PGScale, int(b.cfg.PGFor.Seconds()))
	s.addf("- tracker on: without any tracker, and with the eBPF tracker (agent/bdtrack, 4 KiB a bit) attached to the device by the benchmark itself and removed after the run. %d pairs: ratios %s.",
		len(res.tracker), ratiosText(tracker, noTracker))
	s.addf("- replicating: an agent (`--track-writes`) protects the device as a block device (block size %d KiB; its initial point reads the whole device). Without cycles (policy rp-every 24h; its tracker attached; the run starts once controller and agent are idle) and with a cycle every %s (tracked freezes, the dirty blocks read with O_DIRECT, shipped, stored; the run starts after the first point). %d pairs: ratios %s. Controller and agent share this machine's %d cores with PostgreSQL and pgbench: during the replicating runs %s.",
		b.cfg.BlockSize>>10, b.cfg.RPEvery, len(res.replicating), ratiosText(replicating, quiet), runtime.NumCPU(), res.use.describe(res.useFor))
	s.addf("- replicating against no tracker at all, the product of the two rows' ratios: %.3f ×", trackerRow.ratio()*replRow.ratio())
	s.addf("- points committed while pgbench ran replicating: %d; their view methods: %s", res.points, describeCounts(res.methods))
	if len(res.frozen) > 0 {
		s.addf("- tracked freezes (filesystem frozen, from the points' notes), %d: p50 %.0f ms, p99 %.0f ms, max %.0f ms",
			len(res.frozen), 1000*percentile(res.frozen, 50), 1000*percentile(res.frozen, 99), 1000*slices.Max(res.frozen))
	}
	b.details = append(b.details, s)
}

// ratiosText lists the per-pair ratios x/y: "0.97, 1.02".
func ratiosText(x, y []float64) string {
	var out []byte
	for i, r := range ratios(x, y) {
		if i > 0 {
			out = append(out, ", "...)
		}
		out = fmt.Appendf(out, "%.3f", r)
	}
	return string(out)
}
