package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// The WAN cases' links and churn (BENCHMARKS.md).
const (
	wanSyncRate  = 200_000_000 // bit/s
	wanSyncRTT   = 20 * time.Millisecond
	wanRPORate   = 100_000_000 // bit/s
	wanRPORTT    = 40 * time.Millisecond
	wanChurnRate = 5_000_000 // bytes/s
)

// wanSyncRun is what one run of the WAN initial sync case measured.
type wanSyncRun struct {
	ferry, zstd, rsync time.Duration
	rsyncZlib          time.Duration // rsync -z with the compression of rsync before 3.2
	wire, up           int64         // router bytes during Ferry's initial sync: both ways, agent → controller
	zstdBytes          int64         // what the zstd push's sink read
	rsyncSent          int64         // rsync's "Total bytes sent"
	rsyncCompress      string
	use                rigUsage
}

// caseWANSync times the initial sync with the agent and the controller in
// two sites of a lab joined by a wanSyncRate, wanSyncRTT link, against a
// zstd push and an `rsync -z` full copy over the same link.
func (b *bench) caseWANSync(ctx context.Context) (err error) {
	w, proof, err := b.measuredWAN(ctx, wanSyncRate, wanSyncRTT)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.close()) }()
	d, err := startRsyncdIn(ctx, w.ctl, b.work, filepath.Join(b.xfs.Dir, "rsync-wan"))
	if err != nil {
		return err
	}
	defer d.close()
	var runs []wanSyncRun
	for i := 1; i <= b.cfg.Runs; i++ {
		res, err := b.wanSyncRun(ctx, w, d, i, i == 1)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		runs = append(runs, res)
	}
	col := func(f func(wanSyncRun) float64) []float64 { return column(runs, f) }
	ferry := col(func(r wanSyncRun) float64 { return r.ferry.Seconds() })
	zstd := col(func(r wanSyncRun) float64 { return r.zstd.Seconds() })
	rsync := col(func(r wanSyncRun) float64 { return r.rsync.Seconds() })
	zlib := col(func(r wanSyncRun) float64 { return r.rsyncZlib.Seconds() })
	const name = "WAN initial sync"
	b.rows = append(b.rows,
		row{Case: name, Unit: unitSeconds, Ferry: ferry, Anchor: zstd, AnchorName: "zstd -1 push", Target: 1.15, TargetText: "≤ 1.15 × zstd push"},
		row{Case: name, Unit: unitSeconds, Ferry: ferry, Anchor: rsync, AnchorName: "rsync -z", Target: 0.5, TargetText: "≤ 0.5 × rsync -z"},
		row{Case: name, Unit: unitSeconds, Ferry: ferry, Anchor: zlib, AnchorName: "rsync -z --compress-choice=zlib", Info: true,
			TargetText: "— (rsync -z as before rsync 3.2)"},
	)
	alloc, _, err := treeSize(b.pristine)
	if err != nil {
		return err
	}
	s := section{Title: fmt.Sprintf("WAN initial sync (%d Mbit/s, %s round trip)", wanSyncRate/1_000_000, wanSyncRTT)}
	s.addf("- The lab (internal/netlab): sites \"agent\" and \"controller\" joined through a router namespace, each site's link capped at %d Mbit/s (tbf, both ends) with %s of delay each way (the userspace forwarder): %s round trip between them.",
		wanSyncRate/1_000_000, wanSyncRTT/4, wanSyncRTT)
	s.addf("- %s", proof.describe(w))
	s.addf("- Each run: a reflink clone of the %d MiB image (%.0f MB allocated) on the XFS loop mount; `ferry serve` in the controller's site listening on its address, `ferry-agent run` (enrolled there) in the agent's site; no proxy, bytes are counted by the lab's router (IP packets, headers included). Policy block size %d KiB. Every timed step starts after `sync` and `echo 3 > /proc/sys/vm/drop_caches`.",
		b.cfg.Size>>20, float64(alloc)/1e6, b.cfg.BlockSize>>10)
	s.addf("- Ferry = from just before the admin API's protect call to the moment `points list` (polled every %s) first shows the point, as in the initial sync case. The Ferry processes are stopped before the anchors run.", b.cfg.Poll)
	s.addf("- Anchors, over the same link in the same run: `zstd -q -1 -T2 -c img` writing into a TCP connection opened from the agent's site to a sink in the controller's site that reads to EOF, timed from zstd's start to the sink's EOF; `rsync -a -z --stats img rsync://controller/bench/` to an empty destination of an rsync daemon in the controller's site (module on the same XFS), run from the agent's site.")
	s.addf("- rsync -z lets the two rsyncs negotiate the compression; since rsync 3.2 both pick zstd when built with it (level 3 here), before 3.2 -z meant zlib (level 6). For that reading of the target the same copy also runs with `--compress-choice=zlib`: an info row.")
	s.addf("- Ferry, s: %s; zstd push %s; rsync -z %s; rsync -z --compress-choice=zlib %s", runsText(unitSeconds, ferry), runsText(unitSeconds, zstd), runsText(unitSeconds, rsync), runsText(unitSeconds, zlib))
	s.addf("- bytes: Ferry's initial sync through the router both ways %s (agent → controller %s); zstd -1 output %s; rsync -z \"Total bytes sent\" %s",
		runsText(unitBytes, col(func(r wanSyncRun) float64 { return float64(r.wire) })),
		runsText(unitBytes, col(func(r wanSyncRun) float64 { return float64(r.up) })),
		runsText(unitBytes, col(func(r wanSyncRun) float64 { return float64(r.zstdBytes) })),
		runsText(unitBytes, col(func(r wanSyncRun) float64 { return float64(r.rsyncSent) })))
	s.addf("- rsync's compression, as it negotiated it (`--debug=nstr`): %s", runs[0].rsyncCompress)
	for i, r := range runs {
		s.addf("- run %d: Ferry's initial sync: %s; agent → controller %.0f Mbit/s on average", i+1, r.use.describe(r.ferry), float64(r.up)*8/1e6/r.ferry.Seconds())
	}
	s.addf("- run 1's point was exported with `ferry points export` and compared byte for byte with the image: equal.")
	b.details = append(b.details, s)
	return nil
}

var rsyncCompressRE = regexp.MustCompile(`(?m)^Client negotiated compress: (.+)$`)

// wanSyncRun runs the WAN initial sync once: Ferry, then the anchors.
func (b *bench) wanSyncRun(ctx context.Context, w *wanLink, d *rsyncd, i int, verify bool) (res wanSyncRun, err error) {
	dir, logs, err := b.runDir(b.xfs, fmt.Sprintf("wan-sync-%d", i))
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, img, err := b.imageRig(ctx, dir, logs, b.cfg.Size, time.Hour, rigOptions{wan: w})
	if err != nil {
		return res, err
	}
	defer r.close()
	first, took, use, err := b.initialSync(ctx, r, img)
	if err != nil {
		return res, err
	}
	res.ferry, res.use = took, use
	res.wire, res.up = r.wire()
	b.log.Info("WAN initial sync", "run", i, "took", took.Round(time.Millisecond), "router_MB", res.wire/1e6)
	if verify {
		if err := b.verifyPoint(ctx, r, "m", first.ID, img, filepath.Join(dir, "export")); err != nil {
			return res, err
		}
	}
	r.close() // the anchors have the link and the cores to themselves

	if err := dropCaches(); err != nil {
		return res, err
	}
	if res.zstd, res.zstdBytes, err = w.zstdPush(ctx, img); err != nil {
		return res, err
	}
	dest := filepath.Join(d.dir, "disk.img")
	if err := os.Remove(dest); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	took, out, err := d.send(ctx, w.agent, img, "disk.img", "-a", "-z", "--stats", "--debug=nstr")
	if err != nil {
		return res, err
	}
	res.rsync = took
	if res.rsyncSent, err = parseTotalSent(out); err != nil {
		return res, err
	}
	res.rsyncCompress = "not reported"
	if m := rsyncCompressRE.FindStringSubmatch(out); m != nil {
		res.rsyncCompress = m[1]
	}
	if err := os.Remove(dest); err != nil {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	if res.rsyncZlib, _, err = d.send(ctx, w.agent, img, "disk.img", "-a", "-z", "--compress-choice=zlib"); err != nil {
		return res, err
	}
	b.log.Info("WAN anchors", "run", i, "zstd_push", res.zstd.Round(time.Millisecond), "rsync_z", res.rsync.Round(time.Millisecond),
		"rsync_compress", res.rsyncCompress, "rsync_z_zlib", res.rsyncZlib.Round(time.Millisecond))
	return res, os.Remove(dest)
}

// caseWANRPO is the RPO case (same writer, sampling and write tracking)
// at wanChurnRate with the agent and the controller in two sites of a lab
// joined by a wanRPORate, wanRPORTT link.
func (b *bench) caseWANRPO(ctx context.Context) (err error) {
	w, proof, err := b.measuredWAN(ctx, wanRPORate, wanRPORTT)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.close()) }()
	// Twice the loopback case's churn: at a quarter of its rate the
	// index's recent level folds every ~80 s, and a run of 60 s may hold
	// no fold, which would leave the RPO of a cycle that waits for one out
	// of the figure.
	cs := churnSetup{name: "wan-rpo", rate: wanChurnRate, wan: w, wire: "router (IP packets to and from the agent's site)", lengthen: 2}
	r := row{Case: "WAN RPO under churn (p99)", Target: 5, TargetText: "p99 ≤ 5 s"}
	s, err := b.churnCase(ctx, cs, r)
	if err != nil {
		return err
	}
	s.Title = fmt.Sprintf("WAN RPO under churn (%d Mbit/s, %s round trip)", wanRPORate/1_000_000, wanRPORTT)
	s.Body = append([]string{
		fmt.Sprintf("- The lab (internal/netlab): sites \"agent\" and \"controller\" joined through a router namespace, each site's link capped at %d Mbit/s with %s of delay each way: %s round trip. `ferry serve` in the controller's site, `ferry-agent run` in the agent's site dialling the controller's address; no proxy, the router counts the bytes. The initial sync runs over the same link.",
			wanRPORate/1_000_000, wanRPORTT/4, wanRPORTT),
		"- " + proof.describe(w),
	}, s.Body...)
	b.details = append(b.details, s)
	return nil
}
