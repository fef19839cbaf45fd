package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// cycleDisk is one disk during a cycle.
type cycleDisk struct {
	name    string
	view    snapshot.ViewDisk
	src     disk.Source
	m       *blockmap.Map
	trusted bool
	// fresh: the disk had no block map before this cycle (added to the
	// machine): its map holds zeros and is not a witness of the head point.
	fresh  bool
	bs     int
	format disk.Format // forced (DiskConfig.Format); "" detects
	// resynced counts the bytes a hash resync compared (nil: not counted).
	resynced *atomic.Int64
}

// compared counts block b as compared by a hash resync.
func (d *cycleDisk) compared(b int64) {
	if d.resynced != nil {
		d.resynced.Add(blockBytes(b, d.bs, d.src.Size()))
	}
}

// cycle takes a view, finds what changed and ships it; it returns the new
// point's id.
func (m *machineLoop) cycle(ctx context.Context, cfg msg.MachineConfig, app, patches bool) (int64, error) {
	var drv snapshot.Driver
	if d := m.driver(nil); d.Has(driver.ActionStatus) || d.Has(driver.ActionPause) {
		// The source driver's commands keep points consistent; without
		// them a point would silently be weaker than asked, so the cycle
		// fails with the refusal instead.
		if err := m.a.allow(permExecDrivers); err != nil {
			return 0, err
		}
		drv = d
	}
	if _, left := m.a.pausedLeft.LoadAndDelete(cfg.Name); left {
		m.a.resumeLeftPaused(ctx, cfg.Name, m.driver(nil))
	}
	return m.a.runCycle(ctx, cycleParams{cfg: cfg, app: app, patches: patches, driver: drv,
		mapDir: m.a.state.MachineDir(cfg.Name), keep: true, report: m.report})
}

// cycleParams says how to run one cycle.
type cycleParams struct {
	cfg     msg.MachineConfig
	app     bool
	patches bool
	driver  snapshot.Driver // the source driver, for consistency (nil: none)
	mapDir  string          // where the disks' block maps live
	resync  bool            // compare every block with the controller's hashes
	name    string          // a name for the point
	keep    bool            // keep the view as the next cycle's base
	report  reporter
	// beforeHash, when set, runs as a hash resync of a disk begins (a
	// crash test's pause point).
	beforeHash func()
}

// runCycle is one cycle: view, change detection, shipping, commit.
func (a *Agent) runCycle(ctx context.Context, p cycleParams) (int64, error) {
	cfg := p.cfg
	log := a.log.With("machine", cfg.Name)
	req := snapshot.Request{
		Machine: cfg.Name, Disks: snapDisks(cfg), App: p.app,
		PreSnapshot: cfg.PreSnapshot, PostSnapshot: cfg.PostSnapshot, Freeze: cfg.Freeze, Env: cfg.Env,
		RunCommand: func(ctx context.Context, line string, env map[string]string) error {
			_, err := driver.RunShell(ctx, line, env, driver.DefaultTimeout, "snapshot hook")
			return err
		},
	}
	req.Driver = p.driver
	tm := cycleTimes{start: a.cfg.Now()}
	view, caps, err := a.takeView(ctx, req, cfg)
	tm.view = a.cfg.Now()
	if err != nil {
		return 0, fmt.Errorf("view: %w", err)
	}
	kept := false
	defer func() {
		if !kept {
			view.Discard()
		}
	}()

	dir := p.mapDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	disks := make([]*cycleDisk, len(view.Disks))
	defer func() {
		for _, d := range disks {
			if d == nil {
				continue
			}
			if d.src != nil {
				d.src.Close()
			}
			if d.m != nil {
				d.m.Close()
			}
		}
	}()
	begin := msg.CycleBeginRequest{Machine: cfg.Name, Map: msg.MapState{Valid: true}}
	witnesses := 0 // disks whose maps say what the controller holds
	for i, vd := range view.Disks {
		d := &cycleDisk{name: vd.Name, view: vd, bs: cfg.Disks[i].BlockSize, format: disk.Format(cfg.Disks[i].Format)}
		disks[i] = d
		if caps.disks != nil {
			d.src = caps.disks[i]
		} else if d.src, err = disk.Open(vd.Path, disk.OpenOptions{Format: d.format, Stats: &a.ReadStats, BaseDir: filepath.Dir(vd.Source)}); err != nil {
			return 0, fmt.Errorf("disk %s: %w", vd.Name, err)
		}
		// A disk that became empty was truncated or replaced under us; a
		// point of it would be a machine without its disk. Fail the cycle
		// (it is retried) and keep the points made so far.
		if d.src.Size() == 0 {
			return 0, fmt.Errorf("disk %s (%s) is empty (size 0): no point is made until it has data again", vd.Name, vd.Source)
		}
		mapPath := filepath.Join(dir, vd.Name+".map")
		if _, err := os.Stat(mapPath); errors.Is(err, fs.ErrNotExist) && cfg.NewDisksAlone {
			d.fresh = true
		}
		if d.m, d.trusted, err = blockmap.Open(mapPath, d.bs, d.src.Size(), blockmap.BootID()); err != nil {
			return 0, fmt.Errorf("disk %s map: %w", vd.Name, err)
		}
		// A disk new to the machine is synced alone: the other disks' maps
		// say what the controller holds, and the new one holds zeros (the
		// controller checks that against its repository: NewMap).
		if !d.fresh {
			st := d.m.State()
			if witnesses == 0 {
				begin.Map.HeadPoint, begin.Map.Pending = st.HeadPoint, st.Pending
			} else if st.HeadPoint != begin.Map.HeadPoint || st.Pending != begin.Map.Pending {
				begin.Map.Valid = false // the disks' maps disagree
			}
			witnesses++
		}
		if !d.trusted || p.resync {
			begin.Map.Valid = false
		}
		begin.Disks = append(begin.Disks, msg.DiskInfo{Name: vd.Name, Size: d.src.Size(), BlockSize: d.bs, NewMap: d.fresh})
	}
	if caps.disks != nil && (!begin.Map.Valid || begin.Map.HeadPoint != caps.base) {
		a.tracking.forget(cfg.Name)
		return 0, fmt.Errorf("write tracking counts from point %d but the disks' maps stand at point %d (valid %t): the cycle is retried without write tracking",
			caps.base, begin.Map.HeadPoint, begin.Map.Valid)
	}
	var bresp msg.CycleBeginResponse
	if err := a.call(ctx, msg.MethodCycleBegin, begin, &bresp); err != nil {
		return 0, fmt.Errorf("begin cycle: %w", err)
	}
	if caps.disks != nil && bresp.Resync {
		// A resync compares every block; the capture holds only the
		// changed ones.
		a.tracking.forget(cfg.Name)
		return 0, fmt.Errorf("the controller asked for a hash resync (%s): the cycle is retried without write tracking", bresp.ResyncReason)
	}
	tm.begun = a.cfg.Now()
	sd := make([]ship.Disk, len(disks))
	stopResync := func() {}
	if bresp.Resync {
		// A hash resync reads every block of every disk: its progress is
		// the disks' bytes compared, reported like shipping's.
		rp := &cycleProgress{phase: "resync", started: a.cfg.Now()}
		for _, d := range disks {
			rp.total += d.src.Size()
			d.resynced = &rp.done
		}
		p.report(ctx, rp.request(0, 0))
		stopResync = rp.watch(ctx, p.report, a.cfg.Now)
	}
	defer stopResync() // on an early return; stopping twice is harmless
	for i, d := range disks {
		var cands iter.Seq[ship.Candidate]
		switch {
		case bresp.Resync:
			log.Info("hash resync", "disk", d.name, "reason", bresp.ResyncReason)
			if p.beforeHash != nil {
				p.beforeHash()
			}
			dirty, err := a.resync(ctx, bresp.Cycle, uint16(i), d)
			if err != nil {
				return 0, fmt.Errorf("resync disk %s: %w", d.name, err)
			}
			cands = listed(dirty)
		case caps.disks != nil:
			// The tracker's pages, read in the freeze. A size change or a
			// resumed point needs blocks the capture does not hold.
			if len(d.m.Recheck()) > 0 || (begin.Map.Pending != 0 && bresp.Cycle == begin.Map.Pending) {
				a.tracking.forget(cfg.Name)
				return 0, fmt.Errorf("disk %s changed size or the cycle resumes a pending point: the cycle is retried without write tracking", d.name)
			}
			cands = fromRanges(caps.disks[i].changed, d.bs)
		default:
			cands, err = a.candidates(ctx, cfg.Name, d, begin.Map.HeadPoint)
			if err != nil {
				return 0, err
			}
			// A size change: the blocks at the old and new end (and a
			// regrown range the controller may still hold) are compared
			// whatever the change detection found (blockmap.Open).
			if rc := d.m.Recheck(); len(rc) > 0 {
				log.Info("disk size changed: rechecking the blocks at its ends", "disk", d.name, "size", d.src.Size(), "blocks", len(rc))
				cands = withRechecks(cands, rc)
			}
			if resumed := begin.Map.Valid && begin.Map.Pending != 0 && bresp.Cycle == begin.Map.Pending; resumed && !d.fresh {
				again, err := a.recheckPending(ctx, bresp.Cycle, uint16(i), d)
				if err != nil {
					return 0, fmt.Errorf("recheck the pending point's blocks of disk %s: %w", d.name, err)
				}
				if len(again) > 0 {
					log.Info("resumed cycle: rechecking the blocks the pending point stored", "disk", d.name, "blocks", len(again))
					cands = withRechecks(cands, again)
				}
			}
		}
		if err := d.m.BeginCycle(bresp.Cycle, blockmap.BootID()); err != nil {
			return 0, err
		}
		sd[i] = ship.Disk{Index: uint16(i), Reader: d.src, Size: d.src.Size(), BlockSize: d.bs, Map: d.m, Candidates: cands}
	}
	stopResync()
	tm.diffed = a.cfg.Now()
	var lim *rate.Limiter
	if cfg.Bandwidth > 0 {
		lim = rate.NewLimiter(rate.Limit(cfg.Bandwidth), int(min(cfg.Bandwidth, 4<<20)))
	}
	prog := &cycleProgress{phase: "shipping", started: a.cfg.Now()}
	for _, d := range sd {
		prog.total += candidateBytes(d.Candidates, d.BlockSize, d.Size)
	}
	p.report(ctx, prog.request(0, 0))
	stopWatch := prog.watch(ctx, p.report, a.cfg.Now)
	res, err := ship.Run(ctx, ship.Config{
		Cycle: uint64(bresp.Cycle), Disks: sd, Streams: a.cfg.Streams, Patches: p.patches && bresp.Patches,
		Limiter: lim, Compressor: a.comp, Log: log, Progress: func(n int64) { prog.done.Add(n) },
		Codec: a.cfg.WireCodec, S2: acceptsS2(bresp),
		Open: func(ctx context.Context) (io.ReadWriteCloser, error) {
			s, _ := a.currentSession()
			if s == nil {
				return nil, protocol.Errorf(protocol.CodeUnavailable, "not connected")
			}
			st, err := s.Open(ctx, protocol.KindData)
			if err != nil {
				return nil, err
			}
			return st, nil
		},
	})
	stopWatch()
	if err != nil {
		return 0, fmt.Errorf("ship: %w", err)
	}
	tm.shipped = a.cfg.Now()
	// Every read of the view is done: its level is final (a quiet-file
	// view checks here that no image was written meanwhile).
	view.ReadDone()
	a.notePageCacheReads(view, disks, log)
	var eresp msg.CycleEndResponse
	err = a.call(ctx, msg.MethodCycleEnd, msg.CycleEndRequest{
		Machine: cfg.Name, Cycle: bresp.Cycle, Parts: res.Parts, Entries: res.Entries,
		Instant: view.Instant.UnixNano(), Consistency: view.Consistency, Note: view.Note(), Name: p.name,
		Method: view.Method, Reason: view.Reason(),
	}, &eresp)
	if err != nil {
		return 0, fmt.Errorf("end cycle: %w", err)
	}
	for _, d := range disks {
		if err := d.m.Commit(eresp.PointID); err != nil {
			return 0, err
		}
	}
	if p.keep {
		dropStaleMaps(dir, cfg, log)
		if err := view.Keep(eresp.PointID); err != nil {
			log.Warn("keeping the view as the next base failed; the next cycle scans", "err", err)
		}
		kept = true
	}
	log.Info("point made", append([]any{"point", eresp.PointID, "consistency", view.Consistency, "method", view.Method,
		"instant", view.Instant.Format(time.RFC3339Nano), // this machine's clock (the controller's may be off by its offset's error)
		"changed", res.Entries, "sent", res.Sent, "patches", res.Patches, "deduped", res.Deduped, "wire_bytes", res.WireBytes,
		"wire_codec", res.Codec, "s2_bytes", res.CodecBytes.S2, "zstd_bytes", res.CodecBytes.Zstd, "none_bytes", res.CodecBytes.None,
		"codec_switches", res.CodecSwitches,
		"container_read_bytes", a.ReadStats.Bytes.Load()}, // since start: holes are never read
		tm.attrs(a.cfg.Now())...)...)
	// The cycle's last report: every byte done, the rate over the whole
	// cycle, and what travelled.
	final := prog.request(prog.total, 0)
	if secs := a.cfg.Now().Sub(prog.started).Seconds(); secs > 0 {
		final.RateBPS = int64(float64(prog.total) / secs)
	}
	final.Phase, final.BytesSent, final.BlocksSent = "idle", res.WireBytes, res.Sent
	p.report(ctx, final)
	return eresp.PointID, nil
}

// acceptsS2 says whether the controller takes S2 blocks on the cycle's
// data streams. A controller before S2 omits the codecs list: the cycle
// then sends none and zstd only.
func acceptsS2(bresp msg.CycleBeginResponse) bool {
	return slices.Contains(bresp.Codecs, msg.WireCodecS2)
}

// cycleTimes marks when a cycle's phases ended, so that the log says where
// a long cycle spent its time: a point's age when it lands (its RPO) is
// everything after the view, and the next cycle waits for all of it.
type cycleTimes struct{ start, view, begun, diffed, shipped time.Time }

// attrs are the phases' durations in milliseconds, as log attributes.
func (t cycleTimes) attrs(end time.Time) []any {
	ms := func(a, b time.Time) int64 { return b.Sub(a).Milliseconds() }
	return []any{"view_ms", ms(t.start, t.view), "begin_ms", ms(t.view, t.begun), "changes_ms", ms(t.begun, t.diffed),
		"ship_ms", ms(t.diffed, t.shipped), "end_ms", ms(t.shipped, end)}
}

// candidates picks the blocks to compare: the extent diff against the last
// point's clone when both are reflink clones, else every allocated block
// plus every block the map holds as non-zero.
func (a *Agent) candidates(ctx context.Context, machine string, d *cycleDisk, head int64) (iter.Seq[ship.Candidate], error) {
	if rs, ok := a.extentDiff(ctx, machine, d, head); ok {
		// The changed blocks are read where they lie, not front to back.
		disk.AdviseRandom(d.src)
		return fromRanges(rs, d.bs), nil
	}
	ext, err := d.src.Extents(ctx)
	if err != nil {
		return nil, fmt.Errorf("disk %s extents: %w", d.name, err)
	}
	return scan(ext, d.m, d.bs), nil
}

// extentDiff is the guest ranges that changed since the clone kept for the
// head point, when the view and that clone can be compared: a raw file's
// two clones by their extents, an image's through imageChanges.
func (a *Agent) extentDiff(ctx context.Context, machine string, d *cycleDisk, head int64) ([]snapshot.Range, bool) {
	if !d.view.Cloned {
		return nil, false
	}
	base, ok := a.taker.Base(machine, snapshot.Disk{Name: d.name, Path: d.view.Source}, head)
	if !ok {
		return nil, false
	}
	if d.src.Format() != disk.FormatRaw {
		return a.imageChanges(ctx, base, d)
	}
	be, err1 := snapshot.Extents(base)
	ve, err2 := snapshot.Extents(d.view.Path)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	return snapshot.DiffExtents(be, ve, d.src.Size()), true
}

// imageChanges finds the guest ranges of an image file (qcow2, VHDX, VHD,
// sparse VMDK) that changed since the clone kept for the head point: the
// container files' extent diff says which bytes of the container may
// differ; when none do (an idle disk), nothing is read at all; otherwise
// the two images' tables are compared (disk.ChangedRanges) and only the
// guest ranges that map to changed or moved bytes are candidates. ok is
// false when the images cannot be compared this way: the caller then
// compares every allocated block.
func (a *Agent) imageChanges(ctx context.Context, base string, d *cycleDisk) ([]snapshot.Range, bool) {
	log := a.log.With("disk", d.name)
	be, err1 := snapshot.Extents(base)
	ve, err2 := snapshot.Extents(d.view.Path)
	bst, err3 := os.Stat(base)
	vst, err4 := os.Stat(d.view.Path)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		log.Debug("no extent diff for the image; every allocated block is compared", "err", err)
		return nil, false
	}
	var host []disk.Extent
	for _, r := range snapshot.DiffExtents(be, ve, max(bst.Size(), vst.Size())) {
		host = append(host, disk.Extent{Offset: r.Offset, Length: r.Length})
	}
	if len(host) == 0 && bst.Size() == vst.Size() {
		// Both clones share every physical block: the container, its
		// header and tables included, is byte for byte the same, and so
		// is the guest disk. Nothing is read.
		return nil, true
	}
	bsrc, err := disk.Open(base, disk.OpenOptions{Format: d.format, Stats: &a.ReadStats, BaseDir: filepath.Dir(d.view.Source)})
	if err != nil {
		log.Debug("the kept image cannot be opened; every allocated block is compared", "err", err)
		return nil, false
	}
	defer bsrc.Close()
	ext, err := disk.ChangedRanges(ctx, bsrc, d.src, host)
	if err != nil {
		log.Debug("the images' mappings cannot be compared; every allocated block is compared", "err", err)
		return nil, false
	}
	out := make([]snapshot.Range, len(ext))
	for i, e := range ext {
		out[i] = snapshot.Range{Offset: e.Offset, Length: e.Length}
	}
	return out, true
}

// fromRanges turns changed byte ranges into candidates with the changed
// parts of each block.
func fromRanges(rs []snapshot.Range, bs int) iter.Seq[ship.Candidate] {
	return func(yield func(ship.Candidate) bool) {
		var cur *ship.Candidate
		for _, r := range rs {
			for off := r.Offset; off < r.Offset+r.Length; {
				b := off / int64(bs)
				end := min(r.Offset+r.Length, (b+1)*int64(bs))
				if cur != nil && cur.Block != b {
					if !yield(*cur) {
						return
					}
					cur = nil
				}
				if cur == nil {
					cur = &ship.Candidate{Block: b}
				}
				cur.Ranges = append(cur.Ranges, ship.Range{Offset: int(off - b*int64(bs)), Length: int(end - off)})
				off = end
			}
		}
		if cur != nil {
			yield(*cur)
		}
	}
}

// scan yields every block that holds data, and every hole the map still
// believes non-zero (it must be zeroed at the controller).
func scan(ext []disk.Extent, mp *blockmap.Map, bs int) iter.Seq[ship.Candidate] {
	return func(yield func(ship.Candidate) bool) {
		n := mp.Len()
		e := 0
		for b := int64(0); b < n; b++ {
			lo, hi := b*int64(bs), (b+1)*int64(bs)
			for e < len(ext) && ext[e].Offset+ext[e].Length <= lo {
				e++
			}
			allocated := e < len(ext) && ext[e].Offset < hi
			if allocated {
				if !yield(ship.Candidate{Block: b}) {
					return
				}
			} else if mp.Get(b) != blockmap.ZeroHash {
				if !yield(ship.Candidate{Block: b, Hole: true}) {
					return
				}
			}
		}
	}
}

func listed(blocks []int64) iter.Seq[ship.Candidate] {
	return func(yield func(ship.Candidate) bool) {
		for _, b := range blocks {
			if !yield(ship.Candidate{Block: b}) {
				return
			}
		}
	}
}

// withRechecks merges blocks to compare whole (ascending) into ascending
// candidates: a block in both loses its changed ranges.
func withRechecks(cands iter.Seq[ship.Candidate], blocks []int64) iter.Seq[ship.Candidate] {
	return func(yield func(ship.Candidate) bool) {
		i := 0
		for c := range cands {
			for i < len(blocks) && blocks[i] < c.Block {
				if !yield(ship.Candidate{Block: blocks[i]}) {
					return
				}
				i++
			}
			if i < len(blocks) && blocks[i] == c.Block {
				c.Ranges = nil
				i++
			}
			if !yield(c) {
				return
			}
		}
		for ; i < len(blocks); i++ {
			if !yield(ship.Candidate{Block: blocks[i]}) {
				return
			}
		}
	}
}

var errCut = errors.New("hash stream ended early")

// dropStaleMaps removes the block maps of disks the machine no longer has
// (machines update --remove-disk) once a point without them is committed:
// such a map no longer says what the controller holds, and a disk added
// again under that name is synced as a new one (NewMap).
func dropStaleMaps(dir string, cfg msg.MachineConfig, log *slog.Logger) {
	keep := map[string]bool{}
	for _, d := range cfg.Disks {
		keep[d.Name+".map"] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".map") && !e.IsDir() && !keep[n] {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				log.Warn("removing the block map of a removed disk failed", "map", n, "err", err)
			}
		}
	}
}
