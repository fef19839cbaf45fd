package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/workload"
)

// repoSize is a repository's size after the controller stopped.
type repoSize struct {
	alloc, apparent, packsAlloc, packsApparent int64
}

func measureRepo(data string) (repoSize, error) {
	var s repoSize
	var err error
	repo := filepath.Join(data, "repository")
	if s.alloc, s.apparent, err = treeSize(repo); err != nil {
		return s, err
	}
	s.packsAlloc, s.packsApparent, err = treeSize(filepath.Join(repo, "packs"))
	return s, err
}

func (s repoSize) String() string {
	return fmt.Sprintf("repository %.1f MB allocated (%.1f MB apparent); of which packs %.1f MB allocated (%.1f MB apparent), index and the rest %.1f MB allocated",
		float64(s.alloc)/1e6, float64(s.apparent)/1e6, float64(s.packsAlloc)/1e6, float64(s.packsApparent)/1e6, float64(s.alloc-s.packsAlloc)/1e6)
}

// storageRun is what the storage-efficiency case measured.
type storageRun struct {
	repo         repoSize     // after a GC (compaction and repack)
	beforeGC     repoSize     // as ingest left it
	gc           api.GCReport // what that GC did
	anchorDeltas []int64      // zstd -1 of each delta's changed blocks
	points       int
	wire         int64
	profiles     []profileFile
}

// storageRun protects a clone of the image with rp-every 1s, and after the
// initial point applies cfg.Deltas deltas, waiting after each for the first
// point whose instant is after the delta's fsync; then it stops the
// controller and sizes its repository.
func (b *bench) storageRun(ctx context.Context, profile phase) (res storageRun, err error) {
	name := "storage"
	if profile != phaseNone {
		name = "storage-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, img, err := b.imageRig(ctx, dir, logs, b.cfg.Size, time.Second, rigOptions{})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.protect(ctx, "m", img, "p", ""); err != nil {
		return res, err
	}
	if _, _, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour); err != nil {
		return res, err
	}
	if profile != phaseNone {
		if err := r.restart(ctx, true); err != nil {
			return res, err
		}
	}
	f, err := os.Open(img)
	if err != nil {
		return res, err
	}
	defer f.Close()
	for k := 1; k <= b.cfg.Deltas; k++ {
		ws, err := b.applyDelta(img, b.cfg.Size, 100+k)
		if err != nil {
			return res, err
		}
		synced := time.Now()
		offs := make([]int64, len(ws))
		for i, w := range ws {
			offs[i] = w.Offset
		}
		n, err := zstdSize(ctx, blocksReader(f, touchedBlocks(offs, workload.WriteSize, b.cfg.BlockSize), b.cfg.BlockSize))
		if err != nil {
			return res, err
		}
		res.anchorDeltas = append(res.anchorDeltas, n)
		err = r.waitPoints(ctx, "m", b.cfg.Poll, time.Hour, func(ps []api.Point, _ time.Time) bool {
			return len(ps) > 0 && ps[len(ps)-1].Time.After(synced)
		})
		if err != nil {
			return res, fmt.Errorf("waiting for the point of delta %d: %w", k, err)
		}
		b.log.Info("delta stored", "delta", k, "anchor_MB", float64(n)/1e6)
	}
	if err := r.setRPEvery(ctx, "p", time.Hour); err != nil {
		return res, err
	}
	ps, err := r.cl.Points(ctx, "m")
	if err != nil {
		return res, err
	}
	res.points = len(ps)
	res.wire, _ = r.wire()
	res.beforeGC, res.gc, res.repo, err = sizeAroundGC(ctx, r)
	res.profiles = r.profiles
	return res, err
}

func (b *bench) caseStorage(ctx context.Context) error {
	res, err := b.storageRun(ctx, phaseNone)
	if err != nil {
		return err
	}
	anchor := b.zstdImage
	for _, n := range res.anchorDeltas {
		anchor += n
	}
	b.rows = append(b.rows, row{Case: "storage efficiency", Unit: unitBytes, Ferry: []float64{float64(res.repo.alloc)},
		Anchor: []float64{float64(anchor)}, AnchorName: "zstd -1 of image + changed blocks", Target: 1.05, TargetText: "≤ 1.05 ×", Pass: passStorage})
	s := section{Title: "storage efficiency (XFS)"}
	s.addf("- A reflink clone of the image, policy rp-every 1s; after the initial point, %d deltas of %g%% (each one fsync), each followed by a wait for the first point whose instant is after that fsync. Then the controller is stopped (SIGTERM) and its repository sized. One run: sizes do not depend on timing.", b.cfg.Deltas, 100*b.cfg.Fraction)
	s.addf("- Ferry figure = allocated bytes (st_blocks × 512, `du -s -B1`) of the whole repository directory: packs, SQLite index, config. %s.", res.repo)
	s.addf("- Before that figure, the controller was started again and `ferry gc` run (compaction of every S2 chunk to zstd, then repack): it re-encoded %d chunks (%.1f MB of records, %.1f MB smaller) and repacked %d packs. As ingest left it: %s.",
		res.gc.ChunksRecoded, float64(res.gc.BytesRecoded)/1e6, float64(res.gc.RecodeSaved)/1e6, res.gc.PacksRepacked, res.beforeGC)
	s.addf("- Anchor = `zstd -q -1` size of the image (%.1f MB) + for each delta the `zstd -q -1` size of its changed %d KiB blocks, read after it and concatenated in block order: %s; total %.1f MB.",
		float64(b.zstdImage)/1e6, b.cfg.BlockSize>>10, runsText(unitBytes, int64s(res.anchorDeltas)), float64(anchor)/1e6)
	s.addf("- points in the repository: %d (empty cycles of rp-every 1s included); proxy bytes in all: %.1f MB", res.points, float64(res.wire)/1e6)
	b.details = append(b.details, s)
	return nil
}

// sizeAroundGC stops the rig and sizes its repository as ingest left it
// (S2 for what the controller built and what the agent sent on loopback),
// then starts the controller alone, runs `ferry gc` (which compacts every
// S2 chunk to zstd and repacks) and sizes it again: the figure compared
// with the anchor is the compacted one.
func sizeAroundGC(ctx context.Context, r *rig) (before repoSize, gc api.GCReport, after repoSize, err error) {
	r.stopProcs()
	if before, err = measureRepo(r.data); err != nil {
		return before, gc, after, err
	}
	if err = r.startController(ctx, false); err != nil {
		return before, gc, after, err
	}
	if gc, err = r.cl.GC(ctx); err != nil {
		return before, gc, after, fmt.Errorf("gc: %w", err)
	}
	r.close()
	after, err = measureRepo(r.data)
	return before, gc, after, err
}

func int64s(xs []int64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}

// dedupRun is what the dedup case measured.
type dedupRun struct {
	repo     repoSize     // after a GC (compaction and repack)
	beforeGC repoSize     // as ingest left it
	gc       api.GCReport // what that GC did
	took     time.Duration
	wire     int64
	profiles []profileFile
}

// dedupRun protects cfg.Machines reflink clones of the image at once (one
// protect call after the other) and sizes the repository once every
// machine has its first point. With agents > 1 the clones are spread over
// that many agents, each enrolled on its own: a chunk another agent stored
// must still travel (an agent references only what it has proven to
// possess, docs/security.md), the repository still keeps one copy.
// With sequential, each machine's first point is awaited before the next
// is protected (the case that dedup across machines saves the most wire).
func (b *bench) dedupRun(ctx context.Context, profile phase, agents int, sequential bool) (res dedupRun, err error) {
	name := fmt.Sprintf("dedup-%dagents", agents)
	if sequential {
		name += "-seq"
	}
	if profile != phaseNone {
		name += "-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{profile: profile != phaseNone, stall: b.cfg.Stall})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.createPolicy(ctx, "p", time.Hour, b.cfg.BlockSize); err != nil {
		return res, err
	}
	var imgs []string
	for i := 1; i <= b.cfg.Machines; i++ {
		img := filepath.Join(dir, fmt.Sprintf("m%d.img", i))
		if err := reflinkCopy(b.pristine, img); err != nil {
			return res, err
		}
		imgs = append(imgs, img)
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	names := []string{r.name}
	for i := 2; i <= agents; i++ {
		n := fmt.Sprintf("%s-%d", agentName, i)
		if err := r.addAgent(ctx, n); err != nil {
			return res, err
		}
		names = append(names, n)
	}
	start := time.Now()
	for i, img := range imgs {
		if err := r.protectAs(ctx, names[i%len(names)], fmt.Sprintf("m%d", i+1), img, "p"); err != nil {
			return res, err
		}
		if sequential {
			if _, _, err := r.waitPoint(ctx, fmt.Sprintf("m%d", i+1), 0, b.cfg.Poll, time.Hour); err != nil {
				return res, err
			}
		}
	}
	for i := range imgs {
		if _, _, err := r.waitPoint(ctx, fmt.Sprintf("m%d", i+1), 0, b.cfg.Poll, time.Hour); err != nil {
			return res, err
		}
	}
	res.took = time.Since(start)
	res.wire, _ = r.wire()
	res.beforeGC, res.gc, res.repo, err = sizeAroundGC(ctx, r)
	res.profiles = r.profiles
	return res, err
}

func (b *bench) caseDedup(ctx context.Context) error {
	res, err := b.dedupRun(ctx, phaseNone, 1, false)
	if err != nil {
		return err
	}
	many, err := b.dedupRun(ctx, phaseNone, b.cfg.Machines, false)
	if err != nil {
		return err
	}
	seqOne, err := b.dedupRun(ctx, phaseNone, 1, true)
	if err != nil {
		return err
	}
	seqMany, err := b.dedupRun(ctx, phaseNone, b.cfg.Machines, true)
	if err != nil {
		return err
	}
	b.rows = append(b.rows, row{Case: fmt.Sprintf("dedup (%d clones)", b.cfg.Machines), Unit: unitBytes, Ferry: []float64{float64(res.repo.alloc)},
		Anchor: []float64{float64(b.zstdImage)}, AnchorName: "zstd -1 of one image", Target: 1.10, TargetText: "≤ 1.10 ×", Pass: passDedup})
	alloc, _, err := treeSize(b.pristine)
	if err != nil {
		return err
	}
	s := section{Title: "dedup (XFS)"}
	s.addf("- %d reflink clones of the image protected by one agent, one protect call after the other without waiting (so their initial syncs overlap), policy rp-every 1h; the repository is sized (allocated bytes, as above) after every machine has its first point, the controller stopped and started again, and `ferry gc` run. One run.", b.cfg.Machines)
	s.addf("- %s. As ingest left it, before `ferry gc` (%d chunks re-encoded from S2 to zstd, %.1f MB smaller; %d packs repacked): %s.",
		res.repo, res.gc.ChunksRecoded, float64(res.gc.RecodeSaved)/1e6, res.gc.PacksRepacked, res.beforeGC)
	s.addf("- anchor: `zstd -q -1` of one image: %.1f MB", float64(b.zstdImage)/1e6)
	s.addf("- all %d first points took %s from the first protect call; proxy bytes: %.1f MB (%.2f × one image's allocated %.1f MB)",
		b.cfg.Machines, res.took.Round(time.Millisecond), float64(res.wire)/1e6, float64(res.wire)/float64(alloc), float64(alloc)/1e6)
	s.addf("- the same %d clones on %d agents (one clone each, each agent enrolled on its own): %s; first points took %s; proxy bytes: %.1f MB (%.2f × one image's allocated): an agent references only chunks in points of machines it acts for, so each clone's content travels once per agent, and is stored once.",
		b.cfg.Machines, b.cfg.Machines, many.repo, many.took.Round(time.Millisecond), float64(many.wire)/1e6, float64(many.wire)/float64(alloc))
	s.addf("- one after the other (each first point awaited before the next protect call), on 1 agent: %s, took %s, proxy bytes %.1f MB (%.2f × one image's allocated); on %d agents: %s, took %s, proxy bytes %.1f MB (%.2f ×).",
		seqOne.repo, seqOne.took.Round(time.Millisecond), float64(seqOne.wire)/1e6, float64(seqOne.wire)/float64(alloc),
		b.cfg.Machines, seqMany.repo, seqMany.took.Round(time.Millisecond), float64(seqMany.wire)/1e6, float64(seqMany.wire)/float64(alloc))
	b.details = append(b.details, s)
	return nil
}
