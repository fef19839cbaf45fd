package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// scanRun is what one run of the hash-scan case measured.
type scanRun struct {
	initial, cycle, cat, cycleLogged time.Duration
	made                             logLine
	use                              rigUsage
	profiles                         []profileFile
}

// scanRun runs the hash-scan case once: the image sits on ext4 (no reflink,
// so the agent reads the live file, and --status reports "stopped" so the
// view is crash-consistent), the initial sync is not timed, then after the
// 1% delta `cat img` and one cycle are timed, each from a cold page cache.
// The cycle is triggered and timed as in the sync case.
func (b *bench) scanRun(ctx context.Context, i int, profile phase) (res scanRun, err error) {
	name := fmt.Sprintf("scan-%d", i)
	if profile != phaseNone {
		name = "scan-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(b.ext4.Dir, "disk.img")
	power := filepath.Join(b.ext4.Dir, "power")
	defer os.Remove(img)
	if _, err := command(ctx, "cp", "--sparse=always", b.pristine, img); err != nil {
		return res, err
	}
	if err := os.WriteFile(power, []byte("stopped\n"), 0o644); err != nil {
		return res, err
	}
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{stall: b.cfg.Stall})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.createPolicy(ctx, "p", time.Hour, b.cfg.BlockSize); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := r.protect(ctx, "m", img, "p", "cat "+power); err != nil {
		return res, err
	}
	first, t1, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return res, err
	}
	res.initial = t1.Sub(t0)
	if first.Consistency == "inconsistent" {
		return res, fmt.Errorf("the ext4 view is %s: --status should have made it crash-consistent", first.Consistency)
	}
	if _, err := b.applyDelta(img, b.cfg.Size, 1); err != nil {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	if res.cat, err = catTime(ctx, img); err != nil {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	c, err := r.oneCycle(ctx, "m", "p", first.ID, b.cfg.Poll, profile == phaseDelta)
	if err != nil {
		return res, err
	}
	pt := c.point
	res.cycle, res.use = c.took, c.use
	b.log.Info("hash-scan cycle", "run", i, "took", res.cycle.Round(time.Millisecond), "cat", res.cat.Round(time.Millisecond))
	r.close()
	res.profiles = r.profiles
	res.cycleLogged, res.made, err = r.cycleRecord("m", pt.ID)
	return res, err
}

func (b *bench) caseScan(ctx context.Context) error {
	var runs []scanRun
	for i := 1; i <= b.cfg.Runs; i++ {
		res, err := b.scanRun(ctx, i, phaseNone)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		runs = append(runs, res)
	}
	secs := func(f func(scanRun) time.Duration) []float64 {
		out := make([]float64, len(runs))
		for i, r := range runs {
			out[i] = f(r).Seconds()
		}
		return out
	}
	cycle, cat := secs(func(r scanRun) time.Duration { return r.cycle }), secs(func(r scanRun) time.Duration { return r.cat })
	b.rows = append(b.rows, row{Case: "scan cost (hash-scan path)", Unit: unitSeconds, Ferry: cycle, Anchor: cat,
		AnchorName: "cat of the view", Target: 2.0, TargetText: "≤ 2.0 × cat", Pass: passScan})
	s := section{Title: "scan cost (ext4, hash-scan path)"}
	s.addf("- Each run: a `cp --sparse=always` copy of the image on an ext4 loop mount (no reflink, so the view is the live file; `--status \"cat FILE\"` prints `stopped`, so the view is crash-consistent), a fresh controller and agent, the initial sync (not timed), then the %g%% delta.", 100*b.cfg.Fraction)
	s.addf("- Ferry = one cycle, triggered and timed as the delta cycle (policy rp-every 1h → 1s, to the point being listed). Anchor = `cat img >/dev/null` of the same file. Both from a cold page cache (sync + drop_caches before each); cat runs first.")
	s.addf("- cycle, s: %s; cat, s: %s; controller log cycle begins → point committed: %s; untimed initial syncs: %s",
		runsText(unitSeconds, cycle), runsText(unitSeconds, cat), runsText(unitSeconds, secs(func(r scanRun) time.Duration { return r.cycleLogged })),
		runsText(unitSeconds, secs(func(r scanRun) time.Duration { return r.initial })))
	for i, r := range runs {
		s.addf("- run %d: %s; agent's \"point made\": method=%s changed=%s sent=%s patches=%s wire_bytes=%s",
			i+1, r.use.describe(r.cycle), r.made["method"], r.made["changed"], r.made["sent"], r.made["patches"], r.made["wire_bytes"])
	}
	b.details = append(b.details, s)
	return nil
}
