package scrub

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/storage"
)

// DefaultRate is the background audit's read rate when none is configured:
// modest next to replication and recovery reads (docs/audit.md).
const DefaultRate = 32 << 20

// DefaultEvery is how soon after its commit, or its last audit, a point is
// audited (again) when nothing else is configured.
const DefaultEvery = 24 * time.Hour

// maxPoll bounds how long the background loop sleeps before it looks for
// points that became due (a new point, a shorter interval).
const maxPoll = time.Minute

// Repo is what a pass needs from the repository.
type Repo interface {
	Verify(ctx context.Context, opts storage.VerifyOptions) (storage.VerifyReport, error)
	Points(ctx context.Context, machine string) ([]storage.Point, error)
	Machines(ctx context.Context) ([]string, error)
}

// Store keeps the per-point results (the catalog).
type Store interface {
	RecordAudits(ctx context.Context, rows []catalog.PointAudit, keep map[string][]int64) error
	PointAudits(ctx context.Context, machine string) (map[int64]catalog.PointAudit, error)
}

// Config wires an Auditor.
type Config struct {
	Repo  Repo
	Store Store
	Log   *slog.Logger
	Now   func() time.Time
	// Rate is the read rate in bytes/s of background passes, and of
	// manual passes that give none; 0 disables the background audit (a
	// manual pass then reads unpaced).
	Rate int64
	// Every: a point is audited at most this long after its commit or its
	// last audit; a background pass starts when the first point is due.
	Every time.Duration
	// OnDamage acts on what a pass found (mark the chunks, resync the
	// machines) before the pass is recorded.
	OnDamage func(ctx context.Context, rep storage.VerifyReport) error
}

// Auditor runs point-audit passes, one at a time.
type Auditor struct {
	cfg Config
	run sync.Mutex // one pass at a time

	mu   sync.Mutex
	pass api.AuditPass
}

// New makes an Auditor; Run starts its background loop.
func New(cfg Config) *Auditor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	return &Auditor{cfg: cfg, pass: api.AuditPass{RateLimit: cfg.Rate, BackgroundOff: cfg.Rate <= 0}}
}

// Progress is the running pass (or the last one).
func (a *Auditor) Progress() api.AuditPass {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pass
}

// Run passes whenever a retained point is due, until ctx ends. A failed
// pass is logged and retried at the next poll.
func (a *Auditor) Run(ctx context.Context) {
	if a.cfg.Rate <= 0 {
		a.cfg.Log.Info("point audit disabled (rate 0)")
		return
	}
	for {
		wait, err := a.untilDue(ctx)
		if err != nil && ctx.Err() == nil {
			a.cfg.Log.Error("point audit: listing points", "err", err)
			wait = maxPoll
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if _, err := a.Pass(ctx, "", 0); err != nil && ctx.Err() == nil {
			a.cfg.Log.Error("point audit pass failed", "err", err)
			// Do not spin on a persistent failure.
			select {
			case <-ctx.Done():
			case <-time.After(min(a.cfg.Every, maxPoll)):
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// untilDue is how long until the first retained point is due: Every after
// its last audit, or after its commit when it was never audited. It is
// capped by maxPoll (and Every) so new points are noticed.
func (a *Auditor) untilDue(ctx context.Context) (time.Duration, error) {
	poll := min(a.cfg.Every, maxPoll)
	ms, err := a.cfg.Repo.Machines(ctx)
	if err != nil {
		return poll, err
	}
	now := a.cfg.Now()
	wait := poll
	for _, m := range ms {
		pts, err := a.cfg.Repo.Points(ctx, m)
		if err != nil {
			return poll, err
		}
		if len(pts) == 0 {
			continue
		}
		seen, err := a.cfg.Store.PointAudits(ctx, m)
		if err != nil {
			return poll, err
		}
		for _, p := range pts {
			last := p.Committed
			if r, ok := seen[p.ID]; ok {
				last = r.Audited
			}
			if d := last.Add(a.cfg.Every).Sub(now); d < wait {
				wait = d
			}
		}
	}
	return max(wait, 0), nil
}

// Pass audits every retained point of machine ("" = every machine) now,
// reading at rate bytes/s (0 = the configured rate; unpaced when that is
// 0 too). It waits for a pass already running.
func (a *Auditor) Pass(ctx context.Context, machine string, rate int64) (api.AuditReport, error) {
	a.run.Lock()
	defer a.run.Unlock()
	if rate <= 0 {
		rate = a.cfg.Rate
	}
	// The points retained when the pass starts: every chunk they read is
	// in the pass's list (a point committed later is audited next time).
	ms := []string{machine}
	if machine == "" {
		var err error
		if ms, err = a.cfg.Repo.Machines(ctx); err != nil {
			return api.AuditReport{}, err
		}
	}
	keep := map[string][]int64{}
	n := 0
	for _, m := range ms {
		pts, err := a.cfg.Repo.Points(ctx, m)
		if err != nil {
			return api.AuditReport{}, err
		}
		ids := []int64{}
		for _, p := range pts {
			ids = append(ids, p.ID)
		}
		keep[m] = ids
		n += len(ids)
	}

	start := a.cfg.Now()
	a.mu.Lock()
	a.pass = api.AuditPass{Running: true, Machine: machine, Started: &start, RateLimit: rate, BackgroundOff: a.cfg.Rate <= 0,
		LastStarted: a.pass.LastStarted, LastEnded: a.pass.LastEnded, LastError: a.pass.LastError}
	a.mu.Unlock()
	a.cfg.Log.Info("point audit pass started", "machine", machine, "points", n, "rate", rate)
	p := newPacer(rate)
	began := time.Now()
	rep, err := a.cfg.Repo.Verify(ctx, storage.VerifyOptions{Machine: machine, ReadData: true,
		Plan: func(chunks int) {
			a.mu.Lock()
			a.pass.ChunksTotal = int64(chunks)
			a.mu.Unlock()
		},
		Pace: func(ctx context.Context, b int64) error {
			if err := p.wait(ctx, b); err != nil {
				return err
			}
			a.mu.Lock()
			a.pass.Chunks++
			a.pass.Bytes += b
			a.mu.Unlock()
			return nil
		}})
	if err == nil && a.cfg.OnDamage != nil {
		err = a.cfg.OnDamage(ctx, rep)
	}
	var out api.AuditReport
	if err == nil {
		out, err = a.record(ctx, rep, keep)
		out.Seconds = time.Since(began).Seconds()
	}
	end := a.cfg.Now()
	a.mu.Lock()
	a.pass.Running = false
	a.pass.RateLimit = a.cfg.Rate // idle: the background's rate
	a.pass.LastStarted, a.pass.LastEnded, a.pass.LastError = &start, &end, ""
	if err != nil {
		a.pass.LastError = err.Error()
	}
	a.mu.Unlock()
	if err != nil {
		return api.AuditReport{}, err
	}
	a.cfg.Log.Info("point audit pass done", "machine", machine, "points", out.Points, "chunks", out.Chunks,
		"bytes", out.Bytes, "seconds", out.Seconds, "damaged", len(out.Damaged))
	return out, nil
}

// record logs what the pass found, naming point, disk and blocks, and
// stores each retained point's audit time and damage.
func (a *Auditor) record(ctx context.Context, rep storage.VerifyReport, keep map[string][]int64) (api.AuditReport, error) {
	out := api.AuditReport{Chunks: rep.Chunks, Bytes: rep.Bytes, Damaged: []api.DamagedChunk{}}
	type key struct {
		point int64
		disk  string
	}
	found := map[int64][]api.PointDamage{}
	idx := map[key]int{}
	for _, d := range rep.Damaged {
		dc := api.DamagedChunk{Hash: hashText(d.Hash), Pack: d.Pack, Affected: []api.AffectedBlock{}}
		if d.Err != nil {
			dc.Error = d.Err.Error()
		}
		for _, af := range d.Affected {
			dc.Affected = append(dc.Affected, api.AffectedBlock{Machine: af.Machine, PointID: af.PointID, Disk: af.Disk, Blocks: af.Blocks})
			a.cfg.Log.Warn("point audit: damaged data", "machine", af.Machine, "point", af.PointID, "disk", af.Disk,
				"blocks", blockList(af.Blocks), "pack", d.Pack, "err", dc.Error)
			k := key{af.PointID, af.Disk}
			i, ok := idx[k]
			if !ok {
				i = len(found[af.PointID])
				idx[k] = i
				found[af.PointID] = append(found[af.PointID], api.PointDamage{Disk: af.Disk, Error: dc.Error})
			}
			pd := &found[af.PointID][i]
			pd.Blocks = append(pd.Blocks, af.Blocks...)
		}
		if len(d.Affected) == 0 {
			a.cfg.Log.Warn("point audit: damaged data no retained point reads", "pack", d.Pack, "err", dc.Error)
		}
		out.Damaged = append(out.Damaged, dc)
	}
	now := a.cfg.Now()
	var rows []catalog.PointAudit
	for m, ids := range keep {
		for _, id := range ids {
			dmg := found[id]
			for i := range dmg {
				sort.Slice(dmg[i].Blocks, func(x, y int) bool { return dmg[i].Blocks[x] < dmg[i].Blocks[y] })
			}
			rows = append(rows, catalog.PointAudit{PointID: id, Machine: m, Audited: now, Damage: dmg})
			out.Points++
		}
	}
	return out, a.cfg.Store.RecordAudits(ctx, rows, keep)
}

func hashText(h storage.Hash) string {
	if h == (storage.Hash{}) {
		return ""
	}
	return h.String()
}

// blockList prints block numbers for a log line, the first few of many.
func blockList(b []int64) string {
	const show = 16
	if len(b) <= show {
		return fmt.Sprint(b)
	}
	return fmt.Sprintf("%v… (%d blocks)", b[:show], len(b))
}
