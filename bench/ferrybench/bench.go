package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/internal/workload"
)

// bench holds one invocation's state: the mounts, the pristine image, the
// anchors' daemon and what the cases found.
type bench struct {
	cfg  Config
	log  *slog.Logger
	work string     // absolute
	xfs  *loopMount // reflink path: images, repositories, the rsync destination
	ext4 *loopMount // hash-scan path
	// src holds the churn cases' image when the agent tracks writes: the
	// agent freezes the image's filesystem, which must not be the one its
	// state or the controller's repository is on.
	src      *loopMount
	pristine string // the seeded mixed image on XFS; cases clone it
	rsyncd   *rsyncd

	zstdImage int64 // zstd -1 size of the pristine image (storage anchors)

	rows     []row
	details  []section // per case: how it was measured and per-run figures
	failures []error   // cases that could not run
	profiles []section // top of the profiles of MISS cases
}

// section is a titled markdown block of the report.
type section struct {
	Title string
	Body  []string
}

func (s *section) addf(format string, args ...any) {
	s.Body = append(s.Body, fmt.Sprintf(format, args...))
}

func newBench(cfg Config) (*bench, error) {
	work, err := filepath.Abs(cfg.Work)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(cfg.Bin)
	if err != nil {
		return nil, err
	}
	cfg.Bin = bin
	return &bench{cfg: cfg, log: cfg.Logger, work: work}, nil
}

// run measures every configured case. A case that fails is reported (its
// rows MISS) and the others still run; the error lists the failures.
func (b *bench) run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("ferrybench needs root (loop mounts, drop_caches): run it through scripts/bench.sh")
	}
	if err := requireTools("zstd", "rsync", "mkfs.xfs", "mkfs.ext4", "losetup", "mount", "umount", "cat", "bash", "go"); err != nil {
		return err
	}
	for _, name := range []string{"ferry", "ferry-agent"} {
		if _, err := os.Stat(filepath.Join(b.cfg.Bin, name)); err != nil {
			return fmt.Errorf("%s not built (make build): %w", name, err)
		}
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	if err := cleanLeftovers(ctx, b.work); err != nil {
		return fmt.Errorf("cleaning up an earlier run: %w", err)
	}
	for _, d := range []string{"logs", "profiles"} {
		os.RemoveAll(filepath.Join(b.work, d))
	}
	defer b.teardown()
	if err := b.setup(ctx); err != nil {
		return err
	}
	type caseFn struct {
		name string
		fn   func(context.Context) error
	}
	for _, c := range []caseFn{
		{caseSync, b.caseSync}, {caseScan, b.caseScan}, {caseRPO, b.caseRPO},
		{caseStorage, b.caseStorage}, {caseDedup, b.caseDedup}, {caseMemory, b.caseMemory},
		{caseMaterialize, b.caseMaterialize}, {caseRTO, b.caseRTO}, {caseRoundTrip, b.caseRoundTrip},
		{casePlanRTO, b.casePlanRTO}, {caseMany, b.caseMany}, {caseWANSync, b.caseWANSync}, {caseWANRPO, b.caseWANRPO},
		{casePGTrack, b.casePGTrack},
	} {
		if !b.cfg.has(c.name) {
			continue
		}
		start := time.Now()
		b.log.Info("case starts", "case", c.name)
		if err := c.fn(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.log.Error("case failed", "case", c.name, "err", err)
			b.failures = append(b.failures, fmt.Errorf("case %s: %w", c.name, err))
			continue
		}
		b.log.Info("case done", "case", c.name, "took", time.Since(start).Round(time.Second))
	}
	if b.cfg.Profile {
		if err := b.profileMisses(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.failures = append(b.failures, fmt.Errorf("profiles: %w", err))
		}
	}
	return errors.Join(b.failures...)
}

// setup makes the loop mounts and the pristine image.
func (b *bench) setup(ctx context.Context) error {
	// XFS holds the pristine image plus, at most, one case's data: the
	// largest is the memory case (image ≈ 0.6 × size, repository
	// ≈ 0.45 × size) or a sync run (clone, rsync copy, repository, export).
	xfsSize := b.cfg.Size + max(4*b.cfg.Size, 2*b.cfg.MemSize) + 4<<30
	var err error
	b.log.Info("making the XFS loop mount (reflink)", "size_GiB", xfsSize>>30)
	if b.xfs, err = makeLoopMount(ctx, "xfs", filepath.Join(b.work, "xfs.img"), filepath.Join(b.work, "mnt", "xfs"), xfsSize, b.cfg.xfsMkfsArgs()...); err != nil {
		return err
	}
	if b.cfg.has(caseScan) {
		b.log.Info("making the ext4 loop mount (no reflink)")
		if b.ext4, err = makeLoopMount(ctx, "ext4", filepath.Join(b.work, "ext4.img"), filepath.Join(b.work, "mnt", "ext4"), 2*b.cfg.Size+1<<30); err != nil {
			return err
		}
	}
	if (b.cfg.has(caseRPO) || b.cfg.has(caseWANRPO)) && b.cfg.TrackWrites {
		b.log.Info("making the XFS loop mount of the churn case's image (frozen by the agent)")
		if b.src, err = makeLoopMount(ctx, "xfs", filepath.Join(b.work, "xfs-src.img"), filepath.Join(b.work, "mnt", "xfs-src"), b.cfg.Size+1<<30); err != nil {
			return err
		}
	}
	b.pristine = filepath.Join(b.xfs.Dir, "pristine.img")
	start := time.Now()
	if err := workload.WriteImage(b.pristine, b.cfg.Seed, b.cfg.Size); err != nil {
		return fmt.Errorf("generate the image: %w", err)
	}
	frac, err := allocatedFraction(b.pristine)
	if err != nil {
		return err
	}
	b.log.Info("image generated", "size_MiB", b.cfg.Size>>20, "allocated", fmt.Sprintf("%.0f%%", 100*frac), "took", time.Since(start).Round(time.Millisecond))
	if b.cfg.has(caseSync) {
		if b.rsyncd, err = startRsyncd(ctx, b.work, filepath.Join(b.xfs.Dir, "rsync")); err != nil {
			return err
		}
	}
	if b.cfg.has(caseStorage) || b.cfg.has(caseDedup) {
		if b.zstdImage, err = zstdFileSize(ctx, b.pristine); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) teardown() {
	ctx := context.Background()
	if b.rsyncd != nil {
		b.rsyncd.close()
	}
	for _, m := range []*loopMount{b.src, b.ext4, b.xfs} {
		if m == nil {
			continue
		}
		if err := m.close(ctx); err != nil {
			b.log.Warn("teardown", "mount", m.Dir, "err", err)
		}
	}
}

// runDir makes a fresh data directory for one run of a case on a mount,
// and its log directory in the work directory.
func (b *bench) runDir(m *loopMount, name string) (data, logs string, err error) {
	data = filepath.Join(m.Dir, name)
	logs = filepath.Join(b.work, "logs", name)
	if err := os.RemoveAll(data); err != nil {
		return "", "", err
	}
	for _, d := range []string{data, logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", "", err
		}
	}
	return data, logs, nil
}

// deltaSeed is the seed of delta number k (the same in every run, so that
// runs measure the same workload).
func (b *bench) deltaSeed(k int) uint64 { return b.cfg.Seed*1000 + uint64(k) }

// applyDelta writes delta k (random 4 KiB writes, one fsync) to img and
// returns the writes.
func (b *bench) applyDelta(img string, size int64, k int) ([]workload.Write, error) {
	return b.applyWrites(img, size, k, b.cfg.Fraction)
}

// applyWrites writes delta k as fraction × size bytes of random 4 KiB
// writes at offsets below size (one fsync) to img and returns the writes.
func (b *bench) applyWrites(img string, size int64, k int, fraction float64) ([]workload.Write, error) {
	ws := workload.Delta(b.deltaSeed(k), size, fraction)
	if err := workload.Apply(img, b.deltaSeed(k), ws); err != nil {
		return nil, fmt.Errorf("apply delta %d: %w", k, err)
	}
	return ws, nil
}

// settings is the one-line description of the configuration in the report.
func (b *bench) settings() string {
	return fmt.Sprintf("image %d MiB (seed %d), %d run(s) per timed case, %g%% delta, block size %d KiB, churn %s at %.0f MB/s, %d delta cycles, %d clones, memory image %d GiB, failover RTO disks %s and %s",
		b.cfg.Size>>20, b.cfg.Seed, b.cfg.Runs, 100*b.cfg.Fraction, b.cfg.BlockSize>>10, b.cfg.ChurnFor, float64(b.cfg.ChurnRate)/1e6,
		b.cfg.Deltas, b.cfg.Machines, b.cfg.MemSize>>30, sizeName(b.cfg.Size), sizeName(b.cfg.RTOSize))
}

// report writes the table, the per-case details and the profiles.
func (b *bench) report(w *strings.Builder, started time.Time) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "## Replication (bench/ferrybench), %s on %s\n\n", started.UTC().Format("2006-01-02 15:04 MST"), host)
	fmt.Fprintf(w, "Settings: %s. Took %s.\n\n", b.settings(), time.Since(started).Round(time.Second))
	writeTable(w, b.rows)
	for _, err := range b.failures {
		fmt.Fprintf(w, "\n**FAILED**: %v\n", err)
	}
	for _, s := range append(b.details, b.profiles...) {
		fmt.Fprintf(w, "\n### %s\n\n%s\n", s.Title, strings.Join(s.Body, "\n"))
	}
}
