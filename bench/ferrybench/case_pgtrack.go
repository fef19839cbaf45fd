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

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/pgtest"
)

// pgtrackRound is one round of the tracker-overhead case: pgbench without
// Ferry, with the tracker alone, and with Ferry replicating.
type pgtrackRound struct {
	off, tracked, replicating  float64 // tps
	trackedUse, replicatingUse rigUsage
	frozen                     []float64 // seconds frozen, per tracked-freeze point of the replicating run
	methods                    map[string]int
	points                     int // points committed during the replicating run
}

// casePGTrack measures what tracking and freezing a database's block
// device costs the database: PostgreSQL on ext4 on a whole loop device,
// pgbench (TPC-B-like) for cfg.PGFor, cfg.Runs rounds of three runs: with
// no Ferry process; with an agent (--track-writes) protecting the device
// as a block device after its initial point, no cycle running (the eBPF
// tracker alone); and with a cycle every cfg.RPEvery (tracked freezes,
// the dirty blocks read, shipped and stored). Each row is the median of
// the per-round ratios to the run without Ferry; the freezes are the
// points' notes.
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
	var rounds []pgtrackRound
	for i := range b.cfg.Runs {
		// The run without Ferry comes first in odd rounds and last in even
		// ones: a drift of the machine's speed (other load, the tables
		// growing) weighs on both sides alike.
		var rd pgtrackRound
		offFirst := i%2 == 0
		if offFirst {
			if rd.off, err = b.pgbench(ctx, c); err != nil {
				return fmt.Errorf("round %d without Ferry: %w", i+1, err)
			}
		}
		if rd, err = b.pgtrackOn(ctx, c, m.Dev, i, rd); err != nil {
			return fmt.Errorf("round %d with Ferry: %w", i+1, err)
		}
		if !offFirst {
			if rd.off, err = b.pgbench(ctx, c); err != nil {
				return fmt.Errorf("round %d without Ferry: %w", i+1, err)
			}
		}
		b.log.Info("pgtrack: round done", "round", i+1, "tps_without", rd.off, "tps_tracked", rd.tracked, "tps_replicating", rd.replicating, "freezes", len(rd.frozen))
		rounds = append(rounds, rd)
	}
	b.pgtrackReport(rounds)
	return nil
}

// pgbench runs one timed pgbench from the same start: a checkpoint first,
// so that no run inherits the previous one's dirty pages.
func (b *bench) pgbench(ctx context.Context, c *pgtest.Cluster) (float64, error) {
	if _, err := c.Query(ctx, "checkpoint"); err != nil {
		return 0, err
	}
	res, err := c.Bench(ctx, pgtest.BenchOptions{Clients: 4, Threads: 2, Duration: b.cfg.PGFor})
	return res.TPS, err
}

// pgtrackOn is a round's runs with Ferry: a fresh controller and agent
// protect the device with a policy that makes no cycle but the first; once
// the initial point (a direct read of the whole device, which starts the
// tracker) is made and both processes are idle, pgbench runs with the
// tracker alone. Then the policy's rp-every becomes cfg.RPEvery; after
// the first tracked point pgbench runs again. The rig is closed and the
// tracker unpinned afterwards, so that the next run without Ferry has
// nothing of it.
func (b *bench) pgtrackOn(ctx context.Context, c *pgtest.Cluster, dev string, i int, rd pgtrackRound) (pgtrackRound, error) {
	name := "pgtrack-" + strconv.Itoa(i+1)
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return rd, err
	}
	defer os.RemoveAll(dir)
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{agentArgs: []string{"--track-writes"}, stall: b.cfg.Stall})
	if err != nil {
		return rd, err
	}
	defer func() {
		r.close()
		bdtrack.RemovePinned(dev, bdtrack.Options{})
	}()
	if err := r.createPolicy(ctx, "p", 24*time.Hour, b.cfg.BlockSize); err != nil {
		return rd, err
	}
	if err := r.protect(ctx, "pg", dev, "p", ""); err != nil {
		return rd, err
	}
	first, _, err := r.waitPoint(ctx, "pg", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return rd, err
	}
	if err := r.waitIdle(ctx, time.Minute); err != nil {
		return rd, err
	}
	if rd.tracked, rd.trackedUse, err = b.pgbenchUsage(ctx, c, r); err != nil {
		return rd, err
	}
	if err := r.setRPEvery(ctx, "p", b.cfg.RPEvery); err != nil {
		return rd, err
	}
	second, _, err := r.waitPoint(ctx, "pg", first.ID, b.cfg.Poll, time.Hour)
	if err != nil {
		return rd, err
	}
	if rd.replicating, rd.replicatingUse, err = b.pgbenchUsage(ctx, c, r); err != nil {
		return rd, err
	}
	r.close()
	made, err := r.logLines("agent", "point made")
	if err != nil {
		return rd, err
	}
	rd.methods = map[string]int{}
	for _, l := range made {
		if id, err := l.Int("point"); err == nil && id > second.ID {
			rd.methods[l["method"]]++
		}
	}
	committed, err := r.logLines("controller", "point committed")
	if err != nil {
		return rd, err
	}
	for _, l := range committed {
		if id, err := l.Int("point"); err != nil || id <= second.ID {
			continue
		}
		rd.points++
		if m := frozenNote.FindStringSubmatch(l["reason"]); m != nil {
			ms, _ := strconv.Atoi(m[1])
			rd.frozen = append(rd.frozen, float64(ms)/1000)
		}
	}
	return rd, nil
}

// pgbenchUsage is pgbench with what the rig's processes used meanwhile.
func (b *bench) pgbenchUsage(ctx context.Context, c *pgtest.Cluster, r *rig) (float64, rigUsage, error) {
	u0, err := r.usage()
	if err != nil {
		return 0, rigUsage{}, err
	}
	tps, err := b.pgbench(ctx, c)
	if err != nil {
		return 0, rigUsage{}, err
	}
	u1, err := r.usage()
	return tps, u1.sub(u0), err
}

// waitIdle waits until the controller and the agent together use less
// than 2% of a core over a second: the work that follows the initial point
// (the controller's checks of what it stored) is over.
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

// pgtrackReport adds the rows and the details.
func (b *bench) pgtrackReport(rounds []pgtrackRound) {
	off := column(rounds, func(r pgtrackRound) float64 { return r.off })
	tracked := column(rounds, func(r pgtrackRound) float64 { return r.tracked })
	replicating := column(rounds, func(r pgtrackRound) float64 { return r.replicating })
	var frozen []float64
	methods := map[string]int{}
	points := 0
	for _, r := range rounds {
		frozen = append(frozen, r.frozen...)
		for k, n := range r.methods {
			methods[k] += n
		}
		points += r.points
	}
	b.rows = append(b.rows,
		row{Case: "pgbench tps, tracker on", Unit: unitTPS, Ferry: tracked, Anchor: off, AnchorName: "without",
			Target: 0.9, TargetText: "≥ 0.9 × without", AtLeast: true, Note: "tps per round: " + runsText(unitTPS, tracked)},
		row{Case: fmt.Sprintf("pgbench tps, replicating every %s", b.cfg.RPEvery), Unit: unitTPS, Ferry: replicating, Anchor: off, AnchorName: "without",
			Target: 0.9, TargetText: "≥ 0.9 × without", AtLeast: true, Note: "tps per round: " + runsText(unitTPS, replicating) + "; without: " + runsText(unitTPS, off)})
	s := section{Title: "Tracker overhead (pgbench on a tracked block device)"}
	s.addf("- PostgreSQL %s, data directory on ext4 on a whole 1 GiB loop device; `pgbench -i -s %d`. After a warm-up run, each round runs `pgbench -c 4 -j 2 -T %d` (TPC-B-like) three times, each after a CHECKPOINT: (1) no Ferry process and no tracker (first in odd rounds, last in even ones); (2) a fresh controller and agent (`--track-writes`) protecting the device as a block device, after the initial point (a direct read of the device, which starts the eBPF tracker) and once both processes are idle, with no cycle running: the tracker alone; (3) the same with rp-every %s, after its first tracked point: tracked freezes, the dirty blocks read with O_DIRECT, shipped and stored (block size %d KiB). Controller and agent run on this machine's %d cores with PostgreSQL and pgbench. Each row is the median over %d rounds of the per-round ratio to run (1).",
		filepath.Base(filepath.Dir(pgtest.Bin())), b.cfg.PGScale, int(b.cfg.PGFor.Seconds()), b.cfg.RPEvery, b.cfg.BlockSize>>10, runtime.NumCPU(), len(rounds))
	for i, r := range rounds {
		s.addf("- round %d: %.0f tps without, %.0f with the tracker (%.3f ×), %.0f replicating (%.3f ×); replicating: %s",
			i+1, r.off, r.tracked, r.tracked/r.off, r.replicating, r.replicating/r.off, r.replicatingUse.describe(b.cfg.PGFor))
	}
	s.addf("- points committed while pgbench ran replicating: %d; their view methods: %s", points, describeCounts(methods))
	if len(frozen) > 0 {
		s.addf("- tracked freezes (filesystem frozen, from the points' notes), %d: p50 %.0f ms, p99 %.0f ms, max %.0f ms",
			len(frozen), 1000*percentile(frozen, 50), 1000*percentile(frozen, 99), 1000*slices.Max(frozen))
	}
	b.details = append(b.details, s)
}
