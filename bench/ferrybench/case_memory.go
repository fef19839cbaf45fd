package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrydr/ferry/internal/workload"
)

// memRun is what the agent-memory case measured.
type memRun struct {
	hwm, sampledPeak, ctlHWM int64
	took, gen                time.Duration
	alloc                    int64
	use                      rigUsage
	gc                       gcTrace
}

// memTarget is BENCHMARKS.md's bound: 64 MiB + 16 B per block.
func (b *bench) memTarget() int64 { return 64<<20 + 16*(b.cfg.MemSize/int64(b.cfg.BlockSize)) }

// memRun generates a cfg.MemSize mixed image (≥ 50% allocated) on XFS,
// protects it and reads the agent's VmHWM (/proc/PID/status: the kernel's
// peak resident set) once the first point is listed; VmRSS is also sampled
// every 200 ms as a cross-check, and the agent runs with GODEBUG=gctrace=1
// (one line per collection, no other effect) so the report can tell the
// live heap from what the runtime keeps around it.
func (b *bench) memRun(ctx context.Context) (res memRun, err error) {
	dir, logs, err := b.runDir(b.xfs, "memory")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	start := time.Now()
	if err := workload.WriteImage(img, b.cfg.Seed, b.cfg.MemSize); err != nil {
		return res, fmt.Errorf("generate the %d GiB image: %w", b.cfg.MemSize>>30, err)
	}
	res.gen = time.Since(start)
	frac, err := allocatedFraction(img)
	if err != nil {
		return res, err
	}
	if frac < 0.5 {
		return res, fmt.Errorf("the memory image is %.0f%% allocated; BENCHMARKS.md wants at least 50%%", 100*frac)
	}
	res.alloc, _, err = treeSize(img)
	if err != nil {
		return res, err
	}
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{agentEnv: []string{"GODEBUG=gctrace=1"}, stall: b.cfg.Stall})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.createPolicy(ctx, "p", time.Hour, b.cfg.BlockSize); err != nil {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	pid := r.agent.pid()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if rss, err := procStatus(pid, "VmRSS"); err == nil {
				res.sampledPeak = max(res.sampledPeak, rss)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	u0, err := r.usage()
	if err != nil {
		close(stop)
		wg.Wait()
		return res, err
	}
	t0 := time.Now()
	err = r.protect(ctx, "m", img, "p", "")
	if err == nil {
		_, _, err = r.waitPoint(ctx, "m", 0, b.cfg.Poll, 2*time.Hour)
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return res, err
	}
	res.took = time.Since(t0)
	u1, err := r.usage()
	if err != nil {
		return res, err
	}
	res.use = u1.sub(u0)
	if res.hwm, err = procStatus(pid, "VmHWM"); err != nil {
		return res, err
	}
	if res.ctlHWM, err = procStatus(r.ctl.pid(), "VmHWM"); err != nil {
		return res, err
	}
	r.close()
	res.gc, err = readGCTrace(r.logPath("agent"))
	return res, err
}

func (b *bench) caseMemory(ctx context.Context) error {
	res, err := b.memRun(ctx)
	if err != nil {
		return err
	}
	blocks := b.cfg.MemSize / int64(b.cfg.BlockSize)
	b.rows = append(b.rows, row{Case: fmt.Sprintf("agent memory (%d GiB initial sync)", b.cfg.MemSize>>30), Unit: unitMemory,
		Ferry: []float64{float64(res.hwm)}, Target: float64(b.memTarget()), Pass: passInitial,
		TargetText: fmt.Sprintf("≤ 64 MiB + 16 B × %d blocks = %.1f MiB", blocks, float64(b.memTarget())/(1<<20))})
	s := section{Title: "agent memory (XFS)"}
	s.addf("- A freshly generated %d GiB mixed image (%.0f%% allocated: %.1f GB; generated in %s), protected by a fresh agent; the agent's VmHWM is read from /proc/PID/status when the first point is listed. One run.",
		b.cfg.MemSize>>30, 100*float64(res.alloc)/float64(b.cfg.MemSize), float64(res.alloc)/1e9, res.gen.Round(time.Second))
	s.addf("- agent VmHWM %.1f MiB; VmRSS sampled every 200 ms peaked at %.1f MiB; controller VmHWM %.1f MiB",
		float64(res.hwm)/(1<<20), float64(res.sampledPeak)/(1<<20), float64(res.ctlHWM)/(1<<20))
	s.addf("- initial sync of the %d GiB image: %s (%.0f MB/s of allocated data), cold page cache; %s", b.cfg.MemSize>>30, res.took.Round(time.Millisecond), float64(res.alloc)/1e6/res.took.Seconds(), res.use.describe(res.took))
	s.addf("- the agent's Go heap (GODEBUG=gctrace=1, %d collections): at most %d MB when a collection started, at most %d MB live after one, heap goal at most %d MB (MB = 2^20 bytes as the runtime prints them); the rest of VmHWM is the runtime's and the binary's own (stacks, unreturned spans, text)",
		res.gc.GCs, res.gc.MaxStart, res.gc.MaxLive, res.gc.MaxGoalMB)
	s.addf("- a MISS here is explained with the CPU profile of the initial sync (same pipeline) and the heap figures above")
	b.details = append(b.details, s)
	return nil
}
