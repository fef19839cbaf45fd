package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// phase names what a profiled rerun profiles.
type phase int

const (
	phaseNone    phase = iota
	phaseInitial       // from the processes' start to the first point
	phaseDelta         // processes restarted after the initial point and the delta: one cycle
)

// syncOptions shape one run of the sync case.
type syncOptions struct {
	anchors bool  // run zstd and rsync too (not in profile passes)
	verify  bool  // export the delta point and compare it with the image
	profile phase // which phase runs under --cpu-profile
}

// syncRun is what one run of the sync case measured.
type syncRun struct {
	initial, zstd, rsyncFull, delta, rsyncDelta time.Duration
	initialWire, deltaWire, deltaUp             int64
	rsyncFullSent, rsyncDeltaSent               int64
	cycleLogged                                 time.Duration // controller: cycle begins → point committed
	made                                        logLine       // the agent's "point made" line of the delta point
	agentHWM                                    int64
	initialUse, deltaUse                        rigUsage
	profiles                                    []profileFile
}

// syncRun runs the reflink-path case once: protect a clone of the pristine
// image and time the first point, then apply the 1% delta and time one
// cycle; the anchors run on the same image in between, each after a sync
// and a drop of the page cache, as every timed Ferry step does.
//
// The delta cycle is triggered and timed by rig.oneCycle. The anchors run
// before it, so nothing else runs while it is timed (a second cycle, due
// at once when the first took over 1s, only follows the measurement).
func (b *bench) syncRun(ctx context.Context, i int, o syncOptions) (res syncRun, err error) {
	name := fmt.Sprintf("sync-%d", i)
	if o.profile != phaseNone {
		name = "sync-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, img, err := b.imageRig(ctx, dir, logs, b.cfg.Size, time.Hour, rigOptions{profile: o.profile == phaseInitial})
	if err != nil {
		return res, err
	}
	defer r.close()

	// Initial sync: protect → first point listed.
	first, took, use, err := b.initialSync(ctx, r, img)
	if err != nil {
		return res, err
	}
	res.initial, res.initialUse = took, use
	res.initialWire, _ = r.wire()
	if res.agentHWM, err = procStatus(r.agent.pid(), "VmHWM"); err != nil {
		return res, err
	}
	b.log.Info("initial sync", "run", i, "took", res.initial.Round(time.Millisecond), "wire_MB", res.initialWire/1e6)
	if o.profile == phaseInitial {
		r.close()
		res.profiles = r.profiles
		return res, nil
	}

	if o.anchors {
		if err := dropCaches(); err != nil {
			return res, err
		}
		if res.zstd, err = zstdPipe(ctx, img); err != nil {
			return res, err
		}
		dest := filepath.Join(b.rsyncd.dir, "disk.img")
		if err := os.Remove(dest); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, err
		}
		if err := dropCaches(); err != nil {
			return res, err
		}
		if res.rsyncFull, res.rsyncFullSent, err = b.rsyncd.push(ctx, img, "disk.img", false); err != nil {
			return res, err
		}
		b.log.Info("anchors", "zstd", res.zstd.Round(time.Millisecond), "rsync_full", res.rsyncFull.Round(time.Millisecond))
	}

	if _, err := b.applyDelta(img, b.cfg.Size, 1); err != nil {
		return res, err
	}
	if o.anchors {
		if err := dropCaches(); err != nil {
			return res, err
		}
		if res.rsyncDelta, res.rsyncDeltaSent, err = b.rsyncd.push(ctx, img, "disk.img", true); err != nil {
			return res, err
		}
	}
	// Delta cycle: trigger → point listed.
	if err := dropCaches(); err != nil {
		return res, err
	}
	c, err := r.oneCycle(ctx, "m", "p", first.ID, b.cfg.Poll, o.profile == phaseDelta)
	if err != nil {
		return res, err
	}
	pt := c.point
	res.delta, res.deltaWire, res.deltaUp, res.deltaUse = c.took, c.wire, c.up, c.use
	b.log.Info("delta cycle", "run", i, "took", res.delta.Round(time.Millisecond), "wire_MB", float64(res.deltaWire)/1e6,
		"rsync", res.rsyncDelta.Round(time.Millisecond), "rsync_sent_MB", float64(res.rsyncDeltaSent)/1e6)

	if o.verify {
		if err := b.verifyPoint(ctx, r, "m", pt.ID, img, filepath.Join(dir, "export")); err != nil {
			return res, err
		}
	}
	r.close()
	res.profiles = r.profiles
	res.cycleLogged, res.made, err = r.cycleRecord("m", pt.ID)
	return res, err
}

// initialSync times the initial sync of img as machine "m" with policy
// "p": after a drop of the page cache, from just before the protect call
// to the moment `points list` first shows the point. It returns the point
// with the time and what the processes consumed meanwhile.
func (b *bench) initialSync(ctx context.Context, r *rig, img string) (api.Point, time.Duration, rigUsage, error) {
	if err := dropCaches(); err != nil {
		return api.Point{}, 0, rigUsage{}, err
	}
	u0, err := r.usage()
	if err != nil {
		return api.Point{}, 0, rigUsage{}, err
	}
	t0 := time.Now()
	if err := r.protect(ctx, "m", img, "p", ""); err != nil {
		return api.Point{}, 0, rigUsage{}, err
	}
	first, t1, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return first, 0, rigUsage{}, err
	}
	u1, err := r.usage()
	if err != nil {
		return first, 0, rigUsage{}, err
	}
	return first, t1.Sub(t0), u1.sub(u0), nil
}

// verifyPoint exports a point with the CLI and requires it to equal the
// image byte for byte: a figure of a replication that lost data would be
// meaningless.
func (b *bench) verifyPoint(ctx context.Context, r *rig, machine string, point int64, img, out string) error {
	raw, err := r.exportPoint(ctx, machine, point, out)
	if err != nil {
		return err
	}
	defer os.RemoveAll(out)
	if err := sameContent(img, raw); err != nil {
		return fmt.Errorf("point %d of %s differs from the image: %w", point, machine, err)
	}
	b.log.Info("verified: the exported point equals the image", "point", point)
	return nil
}

// sameContent compares two files byte for byte.
func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("first difference in the MiB at offset %d", off)
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			if eb != ea {
				return fmt.Errorf("lengths differ after offset %d", off)
			}
			return nil
		}
		if ea != nil {
			return ea
		}
		if eb != nil {
			return eb
		}
	}
}

// caseSync runs the sync case cfg.Runs times and adds the initial sync,
// delta cycle and delta bytes rows.
func (b *bench) caseSync(ctx context.Context) error {
	var runs []syncRun
	for i := 1; i <= b.cfg.Runs; i++ {
		res, err := b.syncRun(ctx, i, syncOptions{anchors: true, verify: i == 1})
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		runs = append(runs, res)
	}
	col := func(f func(syncRun) float64) []float64 { return column(runs, f) }
	secs := func(f func(syncRun) time.Duration) []float64 {
		return col(func(r syncRun) float64 { return f(r).Seconds() })
	}
	initial := secs(func(r syncRun) time.Duration { return r.initial })
	delta := secs(func(r syncRun) time.Duration { return r.delta })
	rsyncDelta := secs(func(r syncRun) time.Duration { return r.rsyncDelta })
	b.rows = append(b.rows,
		row{Case: "initial sync", Unit: unitSeconds, Ferry: initial, Anchor: secs(func(r syncRun) time.Duration { return r.zstd }),
			AnchorName: "zstd -1 -T2 pipe", Target: 1.2, TargetText: "≤ 1.2 × zstd pipe", Pass: passInitial},
		row{Case: "initial sync", Unit: unitSeconds, Ferry: initial, Anchor: secs(func(r syncRun) time.Duration { return r.rsyncFull }),
			AnchorName: "rsync daemon full copy", Target: 0.8, TargetText: "≤ 0.8 × rsync", Pass: passInitial},
		row{Case: "delta cycle", Unit: unitSeconds, Ferry: delta, Anchor: rsyncDelta,
			AnchorName: "rsync --inplace --no-whole-file", Target: 0.10, TargetText: "≤ 0.10 × rsync", Pass: passDelta},
		row{Case: "delta bytes on the wire", Unit: unitBytes, Ferry: col(func(r syncRun) float64 { return float64(r.deltaWire) }),
			Anchor: col(func(r syncRun) float64 { return float64(r.rsyncDeltaSent) }), AnchorName: "rsync total bytes sent",
			Target: 0.25, TargetText: "≤ 0.25 × rsync", Pass: passDelta},
	)
	alloc, _, err := treeSize(b.pristine)
	if err != nil {
		return err
	}
	s := section{Title: "initial sync, delta cycle, delta bytes (XFS, reflink + FIEMAP path)"}
	s.addf("- Each run: a reflink clone of the %d MiB image (%.0f MB allocated) on the XFS loop mount, a fresh controller (repository on the same XFS), an agent enrolled through the counting proxy; policy block size %d KiB. Every timed step (Ferry's and each anchor's) starts after `sync` and `echo 3 > /proc/sys/vm/drop_caches`: cold page cache.",
		b.cfg.Size>>20, float64(alloc)/1e6, b.cfg.BlockSize>>10)
	s.addf("- initial sync = from just before the admin API's protect call to the moment `points list` (the admin API's Go client, polled every %s) first shows the point; nothing subtracted. Anchors: `zstd -q -1 -T2 -c img | cat >/dev/null`; `rsync -a --stats img rsync://127.0.0.1/bench/` to an empty destination of an rsync daemon whose module is on the same XFS (rsync does not fsync; Ferry's point is durable).", b.cfg.Poll)
	s.addf("- delta cycle = after the %g%% delta (`workload.Delta`/`Apply`, one fsync), from just before the policy update rp-every 1h → 1s (the trigger) to the point being listed; nothing subtracted. Anchor: `rsync -a --inplace --no-whole-file --stats` of the same image to the daemon holding the pre-delta copy (run before Ferry's cycle).", 100*b.cfg.Fraction)
	s.addf("- delta bytes = bytes through the counting proxy (both directions) from the trigger to the point being listed; anchor = rsync's \"Total bytes sent\" of that delta.")
	s.addf("- initial sync, s: Ferry %s; zstd pipe %s; rsync full %s", runsText(unitSeconds, initial),
		runsText(unitSeconds, secs(func(r syncRun) time.Duration { return r.zstd })), runsText(unitSeconds, secs(func(r syncRun) time.Duration { return r.rsyncFull })))
	s.addf("- initial sync wire bytes (proxy): %s; rsync full copy total bytes sent: %s; agent VmHWM after initial sync: %s",
		runsText(unitBytes, col(func(r syncRun) float64 { return float64(r.initialWire) })),
		runsText(unitBytes, col(func(r syncRun) float64 { return float64(r.rsyncFullSent) })),
		runsText(unitMemory, col(func(r syncRun) float64 { return float64(r.agentHWM) })))
	s.addf("- initial sync throughput: %.0f MB/s of allocated image data (median)", float64(alloc)/1e6/median(initial))
	s.addf("- delta cycle, s: Ferry %s; rsync %s; the controller's own log, cycle begins → point committed: %s",
		runsText(unitSeconds, delta), runsText(unitSeconds, rsyncDelta), runsText(unitSeconds, secs(func(r syncRun) time.Duration { return r.cycleLogged })))
	s.addf("- delta bytes: proxy both ways %s (agent → controller %s); rsync total bytes sent %s",
		runsText(unitBytes, col(func(r syncRun) float64 { return float64(r.deltaWire) })),
		runsText(unitBytes, col(func(r syncRun) float64 { return float64(r.deltaUp) })),
		runsText(unitBytes, col(func(r syncRun) float64 { return float64(r.rsyncDeltaSent) })))
	for i, r := range runs {
		s.addf("- run %d: initial sync: %s", i+1, r.initialUse.describe(r.initial))
		s.addf("- run %d: delta cycle: %s", i+1, r.deltaUse.describe(r.delta))
		s.addf("- run %d, agent's \"point made\" of the delta point: method=%s changed=%s sent=%s patches=%s deduped=%s wire_bytes=%s",
			i+1, r.made["method"], r.made["changed"], r.made["sent"], r.made["patches"], r.made["deduped"], r.made["wire_bytes"])
	}
	s.addf("- run 1's delta point was exported with `ferry points export` and compared byte for byte with the image: equal.")
	b.details = append(b.details, s)
	return nil
}
