package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
)

// Patch records are checked off the write path (docs/storage-format.md
// "Patch records"): Write stores a patch as it arrived and returns once it
// is durable; the check — rebuild the block from its base, compare its
// hash — starts right after, in the background, while the agent ships the
// rest of its cycle, and Commit waits for it. A patch that does not give
// its hash (the agent's idea of the block's unchanged bytes was wrong: a
// write its tracker missed) fails the commit and drops the pending point,
// so the agent resyncs, and no point ever reads a patch that was not
// checked.

// patchChecks tracks the background checks of each pending point.
type patchChecks struct {
	mu     sync.Mutex
	points map[int64]*pointChecks
	all    sync.WaitGroup // every running check, for Close
	sem    chan struct{}  // bounds the checks running at once
}

// pointChecks is one pending point's checks: the records found good, and
// those that were not.
type pointChecks struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok      map[int64]bool
	bad     map[int64]error
	refused int // patches rebuilt at ingest that did not give their hash (not stored)
}

func newPointChecks() *pointChecks {
	return &pointChecks{ok: map[int64]bool{}, bad: map[int64]error{}}
}

// entry is point's checks, made on first use. Call with pc.mu held.
func (pc *patchChecks) entry(point int64) *pointChecks {
	p := pc.points[point]
	if p == nil {
		p = newPointChecks()
		pc.points[point] = p
	}
	return p
}

func newPatchChecks() *patchChecks {
	return &patchChecks{points: map[int64]*pointChecks{}, sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
}

// start checks the records ids of pending point in the background.
func (pc *patchChecks) start(r *Repo, point int64, ids []int64) {
	pc.mu.Lock()
	p := pc.entry(point)
	p.wg.Add(1)
	pc.all.Add(1)
	pc.mu.Unlock()
	go func() {
		defer pc.all.Done()
		defer p.wg.Done()
		for _, id := range ids {
			pc.sem <- struct{}{}
			err := checkPatch(r, id)
			<-pc.sem
			p.mu.Lock()
			if err == nil {
				p.ok[id] = true
			} else {
				p.bad[id] = err
			}
			p.mu.Unlock()
		}
	}()
}

// refuse notes n patches of a pending point that were rebuilt at ingest
// and did not give their hash: its commit fails as for a bad record.
func (pc *patchChecks) refuse(point int64, n int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	p := pc.entry(point)
	p.mu.Lock()
	p.refused += n
	p.mu.Unlock()
}

// take waits for a point's background checks and forgets them.
func (pc *patchChecks) take(point int64) *pointChecks {
	pc.mu.Lock()
	p := pc.points[point]
	delete(pc.points, point)
	pc.mu.Unlock()
	if p != nil {
		p.wg.Wait()
	}
	return p
}

// checkPatch rebuilds a record's block and checks its hash (readPatch).
// A record that is whole by now (a whole chunk took its row) is good.
func checkPatch(r *Repo, id int64) error {
	_, err := r.readChunkID(context.Background(), id)
	return err
}

// settlePatchChecks is Commit's wait for the checks of p's patch records:
// those a background check did not find good (all of them after a
// controller restart resumed the point) are checked now. A record that
// does not give its hash drops the pending point and fails the commit
// with ErrHashMismatch. Call without writeMu: the checks read chunks.
func (p *Pending) settlePatchChecks(ctx context.Context) error {
	c := p.r.c
	pc := c.checks.take(p.ID)
	if pc == nil {
		pc = newPointChecks()
	}
	var todo []int64
	listed := map[int64]bool{}
	for _, did := range p.diskIDs {
		ids, err := c.pointPatches(ctx, did, p.ID)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if !pc.ok[id] && pc.bad[id] == nil && !listed[id] {
				listed[id] = true
				todo = append(todo, id)
			}
		}
	}
	errs := make([]error, len(todo))
	var wg sync.WaitGroup
	for i, id := range todo {
		c.checks.sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-c.checks.sem }()
			errs[i] = checkPatch(p.r, id)
		})
	}
	wg.Wait()
	for i, id := range todo {
		if errs[i] != nil {
			pc.bad[id] = errs[i]
		}
	}
	if len(pc.bad) == 0 && pc.refused == 0 {
		return nil
	}
	var ids []any
	var other []error
	for id, err := range pc.bad {
		if !errors.Is(err, ErrHashMismatch) {
			other = append(other, err) // not a verdict on the patch: nothing leaves
			continue
		}
		ids = append(ids, id)
	}
	if len(other) > 0 {
		return fmt.Errorf("storage: checking the patches of point %d: %w", p.ID, errors.Join(other...))
	}
	// The whole pending point goes: the agent holds acknowledgements of
	// its blocks (its map's pending point), and only a resync, which a
	// vanished pending point makes the controller ask for, brings its
	// map and the repository together again.
	unlock, err := c.lockSettled(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	var blocks []int64
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if len(ids) > 0 {
			list := `(?` + strings.Repeat(",?", len(ids)-1) + `)`
			bs, err := column[int64](tx.QueryContext(ctx, `SELECT block FROM changes WHERE seq=? AND chunk_id IN `+list, append([]any{p.ID}, ids...)...))
			if err != nil {
				return err
			}
			blocks = bs
		}
		return dropPending(ctx, tx, p)
	})
	if err != nil {
		return err
	}
	n := len(ids) + pc.refused
	c.log.Warn("patches that do not give their hash: the pending point is dropped", "point", p.ID, "machine", p.Machine, "patches", n, "blocks", blocks)
	return fmt.Errorf("%w: %d patches of point %d do not give their hash (blocks %v): the pending point is dropped, and the agent must resync", ErrHashMismatch, n, p.ID, blocks)
}

// pointPatches lists the patch records the rows of a point on one disk
// name, in the main table and the recent level (a record both name is
// listed twice; one the recent level replaced may be listed: checking it
// too only costs time).
func (c *core) pointPatches(ctx context.Context, did, seq int64) ([]int64, error) {
	recent := c.recent.pointRows(did, seq, -1) // first: see recent.go
	ids, err := column[int64](c.db.QueryContext(ctx, `SELECT k.id FROM changes ch JOIN chunks k ON k.id = ch.chunk_id
		WHERE ch.disk_id=? AND ch.seq=? AND k.base_id IS NOT NULL`, did, seq))
	if err != nil {
		return nil, err
	}
	var args []any
	for _, r := range recent {
		if r.chunk != 0 {
			args = append(args, r.chunk)
		}
	}
	for len(args) > 0 {
		k := min(len(args), locateBatch)
		if err := c.chunkRowsByID(ctx, args[:k], func(row chunkRow) {
			if row.patch {
				ids = append(ids, row.id)
			}
		}); err != nil {
			return nil, err
		}
		args = args[k:]
	}
	return ids, nil
}

// dropPending deletes a pending point and its rows. It has no records in
// the packs yet: the chunks it brought are left for GC.
func dropPending(ctx context.Context, tx *sql.Tx, p *Pending) error {
	for _, did := range p.diskIDs {
		if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE disk_id=? AND seq=?`, did, p.ID); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM point_disks WHERE point_id=?`, p.ID); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM points WHERE id=? AND state='pending'`, p.ID)
	return err
}
