package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/workload"
	"golang.org/x/sys/unix"
)

// The round-trip case (issue 11): a machine protected from a home agent to
// a recovery site on the rig's agent, failed over and committed; random
// writes at the recovery site; `ferry reprotect` timed and its bytes
// through the proxy counted (both agents' sessions go through it); then
// 64 MiB of random writes at the recovery site and `ferry failback` timed
// until the home driver reports running. Each for the small and the large
// disk; the home disk is compared byte for byte with the recovery site's
// after each job.
const (
	homeAgent = "home"
	// reprotectWrites is the random 4 KiB writes made at the recovery
	// site before the re-protect: sparse, as a machine's writes between a
	// failover's commit and its re-protection usually are (each changed
	// block costs about 320 B beyond its data: docs/failover.md).
	reprotectWrites = 4 << 20
	reprotectDelta  = 300 // their seed (deltaSeed)
	// failbackWrites is written at the recovery site once reverse
	// replication is protected, before the timed failback.
	failbackWrites = 64 << 20
	failbackDelta  = 301
)

// roundTripRun is what one round trip measured.
type roundTripRun struct {
	reprotect, failback       time.Duration // command to exit
	reprotectJob, failbackJob api.Job
	wire                      int64 // proxy bytes, both ways, during the re-protect
	changed                   int   // blocks the re-protect's writes touched
	blocks                    int64 // blocks of the disk
	allocated                 int64 // bytes the disk's file holds (SEEK_DATA extents)
}

// bound is the bound on the re-protect's bytes.
func (r roundTripRun) bound(bs int) int64 {
	return 2*int64(r.changed)*int64(bs) + 64*r.blocks
}

// fillWithImage reflinks copies of the image's first n bytes into img at
// every multiple of n below size: the disk then holds data across its
// size, sharing the image's physical blocks (cheap to make, but read and
// hashed like any data).
func fillWithImage(img, pristine string, n, size int64) error {
	src, err := os.Open(pristine)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	for off := n; off+n <= size; off += n {
		if err := unix.IoctlFileCloneRange(int(dst.Fd()), &unix.FileCloneRange{Src_fd: int64(src.Fd()), Src_length: uint64(n), Dest_offset: uint64(off)}); err != nil {
			return fmt.Errorf("reflink the image into %s at %d: %w", img, off, err)
		}
	}
	return dst.Sync()
}

// allocatedBytes is the bytes of path's data extents (SEEK_DATA/SEEK_HOLE).
func allocatedBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var total, off int64
	for off < st.Size() {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data past off
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return 0, err
		}
		total += hole - data
		off = hole
	}
	return total, nil
}

// roundTripRun runs the case once for a disk of size bytes.
func (b *bench) roundTripRun(ctx context.Context, i int, size int64) (res roundTripRun, err error) {
	name := fmt.Sprintf("roundtrip-%dm-%d", size>>20, i)
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, img, err := b.imageRig(ctx, dir, logs, size, time.Hour, rigOptions{})
	if err != nil {
		return res, err
	}
	defer r.close()
	if b.cfg.FillLarge && size > b.cfg.Size {
		if err := fillWithImage(img, b.pristine, b.cfg.Size, size); err != nil {
			return res, err
		}
	}
	res.allocated, err = allocatedBytes(img)
	if err != nil {
		return res, err
	}
	res.blocks = size / int64(b.cfg.BlockSize)
	// The recovery site: the rig's agent, an exec driver whose start,
	// stop and status keep the machine's power in a file.
	targetDir, power := filepath.Join(dir, "target"), filepath.Join(dir, "power")
	bin, args := r.cli("targets", "add", targetName, "--agent", r.name, "--dir", targetDir,
		"--start", "echo running > "+power, "--stop", "echo stopped > "+power,
		"--status", "cat "+power+" 2>/dev/null || echo absent")
	if _, err := command(ctx, bin, args...); err != nil {
		return res, err
	}
	// Home: another agent through the same proxy, the machine's own
	// driver likewise.
	if err := r.addAgent(ctx, homeAgent); err != nil {
		return res, err
	}
	homePower := filepath.Join(dir, "home-power")
	if err := os.WriteFile(homePower, []byte("running\n"), 0o644); err != nil {
		return res, err
	}
	if _, err := r.cl.Protect(ctx, api.ProtectRequest{
		Machine: "m", Agent: homeAgent, Policy: "p", Target: targetName,
		Disks: []api.DiskRef{{Name: diskName, Path: img}},
		Driver: api.Driver{Start: "echo running > " + homePower, Stop: "echo stopped > " + homePower,
			Status: "cat " + homePower + " 2>/dev/null || echo absent"},
	}); err != nil {
		return res, fmt.Errorf("protect m: %w", err)
	}
	pt, _, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return res, err
	}
	if _, err := r.waitStaged(ctx, targetDir, "m", pt.ID, b.cfg.Poll, time.Hour); err != nil {
		return res, err
	}
	if _, _, err := r.jobCmd(ctx, "failover", "m"); err != nil {
		return res, err
	}
	if _, _, err := r.jobCmd(ctx, "commit", "m", "--force"); err != nil {
		return res, err
	}
	live, err := apply.SetDir(targetDir, "m", apply.SetLive)
	if err != nil {
		return res, err
	}
	liveDisk := apply.DiskPath(live, diskName)

	// Re-protect after sparse writes at the recovery site.
	ws, err := b.applyWrites(liveDisk, b.cfg.Size, reprotectDelta, float64(reprotectWrites)/float64(b.cfg.Size))
	if err != nil {
		return res, err
	}
	offs := make([]int64, len(ws))
	for i, w := range ws {
		offs[i] = w.Offset
	}
	res.changed = len(touchedBlocks(offs, workload.WriteSize, b.cfg.BlockSize))
	if err := dropCaches(); err != nil {
		return res, err
	}
	w0, _ := r.wire()
	if res.reprotect, res.reprotectJob, err = r.jobCmd(ctx, "reprotect", "m", "--stop-source"); err != nil {
		return res, err
	}
	w1, _ := r.wire()
	res.wire = w1 - w0
	if err := sameContent(liveDisk, img); err != nil {
		return res, fmt.Errorf("after the re-protect the home disk differs from the recovery site's: %w", err)
	}
	b.log.Info("reprotect", "run", i, "disk", sizeName(size), "took", res.reprotect.Round(time.Millisecond), "wire", res.wire, "bound", res.bound(b.cfg.BlockSize))

	// Failback after 64 MiB written at the recovery site.
	if _, err := b.applyWrites(liveDisk, b.cfg.Size, failbackDelta, float64(failbackWrites)/float64(b.cfg.Size)); err != nil {
		return res, err
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	if res.failback, res.failbackJob, err = r.jobCmd(ctx, "failback", "m"); err != nil {
		return res, err
	}
	if p, err := os.ReadFile(homePower); err != nil || strings.TrimSpace(string(p)) != "running" {
		return res, fmt.Errorf("after the failback the home driver says %q (%v), not running", p, err)
	}
	if err := sameContent(liveDisk, img); err != nil {
		return res, fmt.Errorf("after the failback the home disk differs from the recovery site's: %w", err)
	}
	b.log.Info("failback", "run", i, "disk", sizeName(size), "took", res.failback.Round(time.Millisecond))
	return res, nil
}

func (b *bench) caseRoundTrip(ctx context.Context) error {
	small, big := b.cfg.Size, b.cfg.RTOSize
	var smalls, bigs []roundTripRun
	for i := 1; i <= b.cfg.Runs; i++ {
		for _, size := range []int64{small, big} {
			res, err := b.roundTripRun(ctx, i, size)
			if err != nil {
				return fmt.Errorf("run %d, %s disk: %w", i, sizeName(size), err)
			}
			if size == small {
				smalls = append(smalls, res)
			} else {
				bigs = append(bigs, res)
			}
		}
	}
	secs := func(runs []roundTripRun, f func(roundTripRun) time.Duration) []float64 {
		out := make([]float64, len(runs))
		for i, r := range runs {
			out[i] = f(r).Seconds()
		}
		return out
	}
	fb := func(r roundTripRun) time.Duration { return r.failback }
	rp := func(r roundTripRun) time.Duration { return r.reprotect }
	b.rows = append(b.rows, row{Case: fmt.Sprintf("failback RTO, %s vs %s disk", sizeName(big), sizeName(small)), Unit: unitSeconds,
		Ferry: secs(bigs, fb), Anchor: secs(smalls, fb), AnchorName: sizeName(small) + " disk", Target: 1.2,
		TargetText: fmt.Sprintf("%s ≤ 1.2 × %s", sizeName(big), sizeName(small))})
	for _, sz := range []struct {
		size int64
		runs []roundTripRun
	}{{small, smalls}, {big, bigs}} {
		var wire, bound []float64
		for _, r := range sz.runs {
			wire, bound = append(wire, float64(r.wire)), append(bound, float64(r.bound(b.cfg.BlockSize)))
		}
		b.rows = append(b.rows, row{Case: fmt.Sprintf("reprotect bytes, %s disk, %d blocks changed", sizeName(sz.size), sz.runs[0].changed), Unit: unitBytes,
			Ferry: wire, Anchor: bound, AnchorName: "2 × changed + 64 B/block", Target: 1.0, TargetText: "≤ 2 × changed + 64 B per block"})
	}
	b.rows = append(b.rows, row{Case: fmt.Sprintf("reprotect time, %s vs %s disk", sizeName(big), sizeName(small)), Unit: unitSeconds,
		Ferry: secs(bigs, rp), Anchor: secs(smalls, rp), AnchorName: sizeName(small) + " disk", Info: true,
		TargetText: "none: grows with the disk (hashing)"})

	s := section{Title: "round trip: reprotect bytes and time, failback RTO (XFS)"}
	s.addf("- Each run, for a %s and a %s disk (a reflink clone of the %s image, the larger one extended with a hole by truncate), a fresh controller, the rig's agent as the recovery site (target %s, exec driver keeping the power in a file: start, stop, status) and a second agent, %q, at home, both through the counting proxy. The machine is protected from home with `--target %s` (policy rp-every 1h; home driver start, stop, status likewise), its first point staged, failed over (`ferry failover m --wait`) and committed.",
		sizeName(small), sizeName(big), sizeName(small), targetName, homeAgent, targetName)
	s.addf("- Re-protect: %d MiB of random 4 KiB writes into the recovery site's live disk (seed %d, the same offsets below %s for both disks), then from a cold page cache `ferry reprotect m --stop-source --wait` timed from the command to its exit 0 (home machine stopped through its driver, home disks kept as home-divergent-JOB by a summary resync, the recovery agent's first cycle by another, the home disks moved in place). Bytes: both directions of both agents' sessions through the proxy during the job; the bound is 2 × the changed %d KiB blocks + 64 B per block of the disk. The home disk is then compared byte for byte with the recovery site's: equal.",
		reprotectWrites>>20, b.deltaSeed(reprotectDelta), sizeName(small), b.cfg.BlockSize>>10)
	s.addf("- Failback: %d MiB of random 4 KiB writes (seed %d) into the live disk once the re-protect has ended (`reverse-protected`), then from a cold page cache `ferry failback m --wait` timed from the command to its exit 0, which comes after the home driver's status reports running (stop at the recovery site, final cycle, home disks moved, start at home). The home disk is compared byte for byte with the recovery site's: equal.",
		failbackWrites>>20, b.deltaSeed(failbackDelta))
	s.addf("- failback, s: %s disk %s; %s disk %s", sizeName(small), runsText(unitSeconds, secs(smalls, fb)), sizeName(big), runsText(unitSeconds, secs(bigs, fb)))
	s.addf("- reprotect, s: %s disk %s; %s disk %s", sizeName(small), runsText(unitSeconds, secs(smalls, rp)), sizeName(big), runsText(unitSeconds, secs(bigs, rp)))
	s.addf("- allocated bytes of the disks (what re-protection hashes at each site): %s disk %s; %s disk %s (-fill-large: %v)",
		sizeName(small), unitBytes.format(float64(smalls[0].allocated)), sizeName(big), unitBytes.format(float64(bigs[0].allocated)), b.cfg.FillLarge)
	for i := range smalls {
		for k, r := range []roundTripRun{smalls[i], bigs[i]} {
			s.addf("- run %d, %s disk: reprotect %s on the wire for %d changed blocks of %d (bound %s, %.3f ×; (wire − 2 × changed) ÷ blocks = %.1f B, negative when zstd shrank the changed blocks more than the rest costs); %s; %s",
				i+1, sizeName([]int64{small, big}[k]), unitBytes.format(float64(r.wire)), r.changed, r.blocks,
				unitBytes.format(float64(r.bound(b.cfg.BlockSize))), float64(r.wire)/float64(r.bound(b.cfg.BlockSize)),
				float64(r.wire-2*int64(r.changed)*int64(b.cfg.BlockSize))/float64(r.blocks),
				jobSteps(r.reprotectJob), strings.Join(r.reprotectJob.Machines[0].Notes, "; "))
			s.addf("- run %d, %s disk: failback %s; %s; %s", i+1, sizeName([]int64{small, big}[k]), unitSeconds.format(r.failback.Seconds()),
				jobSteps(r.failbackJob), strings.Join(append(r.failbackJob.Machines[0].Notes, r.failbackJob.Notes...), "; "))
		}
	}
	b.details = append(b.details, s)
	return nil
}
