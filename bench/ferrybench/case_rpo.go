package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/snapshot"
)

// rpoRun is what the churn case measured.
type rpoRun struct {
	samples  []float64 // seconds: now − instant of the newest point
	written  int64
	took     time.Duration
	points   int // points committed during the churn
	cycles   []float64
	phases   map[string][]float64 // the agent's cycle phases (cyclePhases), seconds per point
	changed  []float64            // blocks each point changed
	methods  map[string]int       // the points' view methods
	stall    time.Duration        // the writer's longest single write
	frozen   []float64            // tracked freezes: seconds frozen, per point
	folds    []float64            // the index's fold transactions that ended during the churn, seconds each
	clone    cloneCost            // a reflink clone of the churned image, after the churn
	wire     int64
	use      rigUsage
	profiles []profileFile
}

// churnSetup is what tells the churn cases apart: RPO under churn on the
// loopback and over a WAN link.
type churnSetup struct {
	name    string   // run directory
	rate    int64    // churn bytes per second
	wan     *wanLink // nil: loopback
	wire    string   // what counts the bytes, for the report
	profile phase
	// ioRows adds the rows of the controller's disk bytes per byte
	// churned (issue 14: written ≤ 1.3, read ≤ 0.2).
	ioRows bool
	// lengthen multiplies cfg.ChurnFor for this case (0 or 1: as it is).
	lengthen int
}

// churnFor is how long this case's writer runs.
func (cs churnSetup) churnFor(cfg Config) time.Duration {
	return cfg.ChurnFor * time.Duration(max(cs.lengthen, 1))
}

// rpoRun is one run of the RPO case: churn at cfg.ChurnRate on the loopback.
func (b *bench) rpoRun(ctx context.Context, profile phase) (rpoRun, error) {
	name := "rpo"
	if profile != phaseNone {
		name = "rpo-profile"
	}
	return b.churnRun(ctx, churnSetup{name: name, rate: b.cfg.ChurnRate, profile: profile})
}

// churnRun protects a clone of the image with rp-every cfg.RPEvery, waits
// for the initial point, then runs the churn writer and, at the same time,
// samples (now − instant of the newest listed point) every cfg.Sample.
func (b *bench) churnRun(ctx context.Context, cs churnSetup) (res rpoRun, err error) {
	name, profile := cs.name, cs.profile
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	o := rigOptions{blockSize: b.cfg.RPOBlockSize, wan: cs.wan}
	if b.src != nil {
		o.agentArgs = []string{"--track-writes"}
		o.imageDir = filepath.Join(b.src.Dir, name)
		if err := os.MkdirAll(o.imageDir, 0o755); err != nil {
			return res, err
		}
		defer os.RemoveAll(o.imageDir)
	}
	r, img, err := b.imageRig(ctx, dir, logs, b.cfg.Size, b.cfg.RPEvery, o)
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.protect(ctx, "m", img, "p", ""); err != nil {
		return res, err
	}
	first, _, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return res, err
	}
	if profile != phaseNone {
		if err := r.restart(ctx, true); err != nil {
			return res, err
		}
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	w0, _ := r.wire()
	u0, err := r.usage()
	if err != nil {
		return res, err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type churned struct {
		n   int64
		err error
	}
	done := make(chan churned, 1)
	start := time.Now()
	go func() {
		n, err := churn(cctx, img, b.cfg.Size, b.cfg.Seed^0xc4, cs.rate, cs.churnFor(b.cfg), &res.stall)
		done <- churned{n, err}
	}()
	tick := time.NewTicker(b.cfg.Sample)
	defer tick.Stop()
	var c churned
sampling:
	for {
		select {
		case c = <-done:
			break sampling
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
			ps, err := r.cl.Points(ctx, "m")
			now := time.Now()
			if err != nil {
				cancel()
				<-done
				return res, fmt.Errorf("points list during churn: %w", err)
			}
			newest := first.Time
			for _, p := range ps {
				if p.Time.After(newest) {
					newest = p.Time
				}
			}
			res.samples = append(res.samples, now.Sub(newest).Seconds())
		}
	}
	if c.err != nil {
		return res, c.err
	}
	res.took, res.written = time.Since(start), c.n
	w1, _ := r.wire()
	res.wire = w1 - w0
	u1, err := r.usage()
	if err != nil {
		return res, err
	}
	res.use = u1.sub(u0)
	ps, err := r.cl.Points(ctx, "m")
	if err != nil {
		return res, err
	}
	for _, p := range ps {
		if p.ID > first.ID {
			res.points++
		}
	}
	r.close()
	res.profiles = r.profiles
	if res.clone, err = measureClone(img); err != nil {
		return res, err
	}
	ctlLines, err := r.logLines("controller", "cycle begins", "point committed")
	if err != nil {
		return res, err
	}
	for id, d := range cycleTimes(ctlLines, "m") {
		if id > first.ID {
			res.cycles = append(res.cycles, d.Seconds())
		}
	}
	if res.folds, err = foldsBetween(r, start, start.Add(res.took)); err != nil {
		return res, err
	}
	made, err := r.logLines("agent", "point made")
	if err != nil {
		return res, err
	}
	res.phases = map[string][]float64{}
	for _, l := range made {
		if id, err := l.Int("point"); err != nil || id <= first.ID || l["machine"] != "m" {
			continue
		}
		for _, ph := range cyclePhases {
			if ms, err := l.Int(ph + "_ms"); err == nil {
				res.phases[ph] = append(res.phases[ph], float64(ms)/1000)
			}
		}
		if n, err := l.Int("changed"); err == nil {
			res.changed = append(res.changed, float64(n))
		}
		if res.methods == nil {
			res.methods = map[string]int{}
		}
		res.methods[l["method"]]++
	}
	committed, err := r.logLines("controller", "point committed")
	if err != nil {
		return res, err
	}
	for _, l := range committed {
		if id, err := l.Int("point"); err != nil || id <= first.ID || l["machine"] != "m" {
			continue
		}
		if m := frozenNote.FindStringSubmatch(l["reason"]); m != nil {
			ms, _ := strconv.Atoi(m[1])
			res.frozen = append(res.frozen, float64(ms)/1000)
		}
	}
	return res, nil
}

// foldsBetween is how long each of the fold transactions of the index's
// recent level (storage/foldround.go) took that ended between from and to:
// writes wait while one runs, so a cycle it falls in lands that much later.
func foldsBetween(r *rig, from, to time.Time) ([]float64, error) {
	lines, err := r.logLines("controller", "index recent level folded its chunk rows", "index recent level folded its change rows", "index recent level folded")
	if err != nil {
		return nil, err
	}
	var out []float64
	for _, l := range lines {
		at, err := l.Time()
		if err != nil || at.Before(from) || at.After(to) {
			continue
		}
		if d, err := time.ParseDuration(l["took"]); err == nil {
			out = append(out, d.Seconds())
		}
	}
	return out, nil
}

// frozenNote is how a tracked freeze's point note says how long the
// filesystem stayed frozen (agent/tracked.go); the controller logs the
// note as the point's reason ("point committed … reason=").
var frozenNote = regexp.MustCompile(`frozen (\d+) ms`)

// cloneCost is what one reflink clone of the churned image costs, the
// floor of every cycle's view: random writes into a file that shares its
// extents with the last view leave it in as many extents, and FICLONE
// walks them all.
type cloneCost struct {
	extents int
	took    time.Duration
}

// measureClone clones img once (its dirty pages written back first, so
// that only the clone is timed), counts its extents and removes the clone.
func measureClone(img string) (cloneCost, error) {
	unix.Sync()
	ext, err := snapshot.Extents(img)
	if err != nil {
		return cloneCost{}, err
	}
	dst := img + ".clone-cost"
	start := time.Now()
	err = snapshot.Clone(img, dst)
	took := time.Since(start)
	os.Remove(dst)
	if err != nil {
		return cloneCost{}, fmt.Errorf("reflink clone of the churned image: %w", err)
	}
	return cloneCost{extents: len(ext), took: took}, nil
}

// cyclePhases are the phases of a cycle the agent logs with each point
// (agent/cycle.go cycleTimes): view (the reflink clone), begin (maps and
// the begin call), changes (the extent diff), ship (read, hash, send,
// durable at the controller), end (commit).
var cyclePhases = []string{"view", "begin", "changes", "ship", "end"}

// describePhases says, per phase, the median and the largest time over the
// churn's points.
func describePhases(phases map[string][]float64) string {
	var parts []string
	for _, ph := range cyclePhases {
		if v := phases[ph]; len(v) > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f / %.2f s", ph, median(v), slices.Max(v)))
		}
	}
	return strings.Join(parts, "; ")
}

func (b *bench) caseRPO(ctx context.Context) error {
	cs := churnSetup{name: "rpo", rate: b.cfg.ChurnRate, wire: "proxy", ioRows: true}
	r := row{Case: "RPO under churn (p99)", Target: 5, TargetText: "p99 ≤ 5 s", Pass: passRPO}
	s, err := b.churnCase(ctx, cs, r)
	if err != nil {
		return err
	}
	s.Title = "RPO under churn (XFS)"
	b.details = append(b.details, s)
	return nil
}

// churnCase runs a churn case cfg.Runs times, adds its row (r with the
// figures) and returns the section describing it, untitled.
func (b *bench) churnCase(ctx context.Context, cs churnSetup, r row) (section, error) {
	// Each run's p99 over its samples; the row is their median. The
	// details below are the last run's.
	var res rpoRun
	var p99s, perRun []string
	var p99v, written, read, churned []float64
	var s section
	for i := range b.cfg.Runs {
		var err error
		if res, err = b.churnRun(ctx, cs); err != nil {
			return s, fmt.Errorf("run %d: %w", i+1, err)
		}
		p50, p99 := percentile(res.samples, 50), percentile(res.samples, 99)
		p99v = append(p99v, p99)
		p99s = append(p99s, fmt.Sprintf("%.2f", p99))
		written = append(written, float64(res.use.ctl.WriteBytes))
		read = append(read, float64(res.use.ctl.ReadBytes))
		churned = append(churned, float64(res.written))
		perRun = append(perRun, fmt.Sprintf("run %d: p50 %.2f s, p99 %.2f s, max %.2f s over %d samples, %d points, controller wrote %.2f and read %.3f bytes per byte churned",
			i+1, p50, p99, slices.Max(res.samples), len(res.samples), res.points,
			float64(res.use.ctl.WriteBytes)/float64(res.written), float64(res.use.ctl.ReadBytes)/float64(res.written)))
	}
	p50, p99 := percentile(res.samples, 50), percentile(res.samples, 99)
	r.Unit, r.Ferry, r.Note = unitSeconds, p99v, "p99 of each run: "+strings.Join(p99s, ", ")+" s"
	b.rows = append(b.rows, r)
	if cs.ioRows {
		// Measured outside the controller: its /proc/PID/io, against the
		// bytes the writer wrote.
		b.rows = append(b.rows,
			row{Case: "controller disk writes under churn", Unit: unitBytes, Ferry: written, Anchor: churned,
				AnchorName: "bytes churned", Target: 1.3, TargetText: "≤ 1.3 × churned", Pass: passRPO},
			row{Case: "controller disk reads under churn", Unit: unitBytes, Ferry: read, Anchor: churned,
				AnchorName: "bytes churned", Target: 0.2, TargetText: "≤ 0.2 × churned", Pass: passRPO})
	}
	for _, l := range perRun {
		s.addf("- %s", l)
	}
	s.addf("- the last run in detail:")
	views := "a reflink clone of the image, on the repository's filesystem; the agent's views are reflink clones"
	if b.cfg.TrackWrites {
		views = "a copy of the image on an XFS mount of its own; the agent runs with --track-writes (tracked freezes of that mount)"
	}
	s.addf("- The image: %s. Policy rp-every %s, block size %d KiB; after the initial point, a writer does random 4 KiB buffered writes of seeded random data at %.0f MB/s for %s while (now − instant of the newest point in `points list`) is sampled every %s. Per run the statistic is over the samples; the row is the median of the runs' p99. Page cache dropped once before the churn.",
		views, b.cfg.RPEvery, b.cfg.RPOBlockSize>>10, float64(cs.rate)/1e6, cs.churnFor(b.cfg), b.cfg.Sample)
	if len(res.methods) > 0 {
		s.addf("- the points' view methods: %s", describeCounts(res.methods))
	}
	if len(res.frozen) > 0 {
		s.addf("- tracked freezes (filesystem frozen, per point): median %.3f s, p99 %.3f s, max %.3f s", median(res.frozen), percentile(res.frozen, 99), slices.Max(res.frozen))
	}
	s.addf("- samples: %d; p50 %.2f s; p99 %.2f s; max %.2f s", len(res.samples), p50, p99, slices.Max(res.samples))
	s.addf("- writer: %.1f MB in %s (%.1f MB/s), longest single write %.1f ms; points committed during the churn: %d; %s bytes during the churn: %.1f MB",
		float64(res.written)/1e6, res.took.Round(time.Millisecond), float64(res.written)/1e6/res.took.Seconds(), float64(res.stall.Microseconds())/1000, res.points, cs.wire, float64(res.wire)/1e6)
	s.addf("- during the churn: %s", res.use.describe(res.took))
	if len(res.folds) == 0 {
		s.addf("- the index's recent level did not fold during the churn: no cycle of this run waited for a fold")
	} else {
		s.addf("- the index's recent level folded during the churn in %d transactions (writes wait while one runs): longest %.2f s, %.2f s in all",
			len(res.folds), slices.Max(res.folds), sum(res.folds))
	}
	if len(res.cycles) > 0 {
		s.addf("- cycle durations in the controller's log (cycle begins → point committed): median %.2f s, p99 %.2f s, max %.2f s",
			median(res.cycles), percentile(res.cycles, 99), slices.Max(res.cycles))
	}
	if len(res.changed) > 0 {
		s.addf("- the agent's cycles (median / max over the %d points): %s; changed blocks per point %.0f / %.0f. A point's age when it lands is everything after its view; the next cycle starts after this one ends.",
			len(res.changed), describePhases(res.phases), median(res.changed), slices.Max(res.changed))
	}
	if res.clone.extents > 0 {
		s.addf("- after the churn the image is in %d extents; one reflink clone of it (the view's floor) took %.2f s", res.clone.extents, res.clone.took.Seconds())
	}
	return s, nil
}

// describeCounts is "a 3, b 1", by name.
func describeCounts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
