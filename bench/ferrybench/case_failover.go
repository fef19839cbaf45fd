package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/workload"
)

// The failover cases. Both run a target on the rig's own agent (the
// recovery-site directory sits on the XFS mount next to the image) and time
// `ferry failover … --wait` from the command to its exit: prerequisites,
// process (a fresh cycle, for --point latest), move (the point written into
// the target's disk set), promote, and start through the exec driver until
// its status prints running.
const (
	targetName = "dr"
	// rtoWrites is the random 4 KiB writes made between staging and the
	// failover in the RTO case.
	rtoWrites = 64 << 20
	// rtoDelta numbers those writes' seed (see deltaSeed): the same writes
	// in every run and for both disks.
	rtoDelta = 200
)

// failoverRun is what one timed failover measured.
type failoverRun struct {
	took     time.Duration // `ferry failover … --wait`, command to exit
	cp       time.Duration // the materialize anchor: cp --sparse=always + sync
	job      api.Job       // the finished job, as --json prints it
	staged   int64         // the staged replica's point before the failover (RTO)
	wire     int64         // proxy bytes, both ways, during the failover
	use      rigUsage      // what the processes consumed during the failover
	alloc    int64         // allocated bytes of the failed-over disk
	changed  int           // blocks the RTO writes touched
	profiles []profileFile
}

// addTarget adds a target on the rig's own agent with the CLI, its disk
// sets in dir/target. The exec driver's start records the machine as
// running in dir/power-MACHINE and its status prints that file, so the
// start step really starts (a status that said running from the outset
// would skip the start command) and the job ends when the driver reports
// running. One file per machine: with one shared file, a machine's status
// read while another's start had truncated it said "absent", and a plan's
// member waited a status poll for nothing.
func (r *rig) addTarget(ctx context.Context, name, dir string) (targetDir string, err error) {
	targetDir, power := filepath.Join(dir, "target"), filepath.Join(dir, "power-")+`"$FERRY_MACHINE"`
	bin, args := r.cli("targets", "add", name, "--agent", r.name, "--dir", targetDir,
		"--start", "echo running > "+power, "--status", "cat "+power+" 2>/dev/null || echo absent")
	if _, err := command(ctx, bin, args...); err != nil {
		return "", err
	}
	return targetDir, nil
}

// waitStaged waits until the staged replica of machine in the target
// directory holds point or a later one with no move in flight, as the
// target agent's state.json says, and returns the point it holds. It fails
// when replication stalls (see stallGuard) or after timeout.
func (r *rig) waitStaged(ctx context.Context, targetDir, machine string, point int64, period, timeout time.Duration) (int64, error) {
	set, err := apply.SetDir(targetDir, machine, apply.SetStaged)
	if err != nil {
		return 0, err
	}
	guard := r.newStallGuard()
	var got int64
	err = poll(ctx, timeout, period, func() (bool, error) {
		if err := r.alive(); err != nil {
			return false, err
		}
		st, err := apply.ReadState(set)
		if err == nil && st.Point >= point && st.MovingTo == 0 {
			got = st.Point
			return true, nil
		}
		if err != nil && !errors.Is(err, apply.ErrNotFound) {
			return false, err
		}
		return false, guard.check()
	})
	if err != nil {
		return 0, fmt.Errorf("waiting for %s to be staged at point %d: %w", machine, point, err)
	}
	return got, nil
}

// failover runs `ferry --json failover MACHINE --wait ARGS…`, timed from
// the command to its exit 0, and returns the finished job. A job during
// which the proxy sees no traffic for the stall period fails, as a wait for
// a point does (the processes' stacks go to their logs).
func (r *rig) failover(ctx context.Context, machine string, args ...string) (time.Duration, api.Job, error) {
	return r.jobCmd(ctx, "failover", machine, args...)
}

// jobCmd runs `ferry --json COMMAND MACHINE --wait ARGS…` (failover,
// commit, reprotect, failback), timed from the command to its exit 0, and
// returns the finished job, as failover does.
func (r *rig) jobCmd(ctx context.Context, command, machine string, args ...string) (time.Duration, api.Job, error) {
	var job api.Job
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	guard := r.newStallGuard()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := guard.check(); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	bin, cargs := r.cli(append([]string{"--json", command, machine, "--wait"}, args...)...)
	took, out, err := timed(ctx, bin, cargs...)
	cancel(nil)
	<-watched
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		return took, job, err
	}
	if err := json.Unmarshal([]byte(out), &job); err != nil {
		return took, job, fmt.Errorf("ferry --json %s printed %q: %w", command, out, err)
	}
	if len(job.Machines) != 1 || job.Machines[0].Name != machine {
		return took, job, fmt.Errorf("%s job %s: machines %+v, want %s alone", command, job.ID, job.Machines, machine)
	}
	return took, job, nil
}

// timedFailover is rig.failover from a cold page cache, with the proxy
// bytes and the processes' usage during it; it then checks that the
// failed-over disk equals img byte for byte (img is not written meanwhile):
// a figure of a failover that produced a wrong disk would be meaningless.
func (b *bench) timedFailover(ctx context.Context, r *rig, targetDir, img string, res *failoverRun, args ...string) error {
	if err := dropCaches(); err != nil {
		return err
	}
	u0, err := r.usage()
	if err != nil {
		return err
	}
	w0, _ := r.wire()
	if res.took, res.job, err = r.failover(ctx, "m", args...); err != nil {
		return err
	}
	w1, _ := r.wire()
	u1, err := r.usage()
	if err != nil {
		return err
	}
	res.wire, res.use = w1-w0, u1.sub(u0)
	live, err := apply.SetDir(targetDir, "m", apply.SetLive)
	if err != nil {
		return err
	}
	disk := apply.DiskPath(live, diskName)
	if err := sameContent(img, disk); err != nil {
		return fmt.Errorf("the failed-over disk %s differs from the image: %w", disk, err)
	}
	if res.alloc, _, err = treeSize(disk); err != nil {
		return err
	}
	b.log.Info("verified: the failed-over disk equals the image", "point", res.job.Machines[0].PointID, "took", res.took.Round(time.Millisecond))
	return nil
}

// materializeRun runs the first-failover case once: the image protected
// without a target, its first point, then a target added and `ferry
// failover m --target dr --point latest-processed --wait` timed (no staged
// replica: the move writes the whole point into a new sparse set); then the
// anchor, `cp --sparse=always --reflink=never img copy && sync` on the same
// XFS. With profile the processes are restarted under --cpu-profile before
// the failover; the cycle an agent runs when it starts is awaited first, so
// the failover is of that (identical) point.
func (b *bench) materializeRun(ctx context.Context, i int, profile bool) (res failoverRun, err error) {
	name := fmt.Sprintf("materialize-%d", i)
	if profile {
		name = "materialize-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, img, err := b.imageRig(ctx, dir, logs, b.cfg.Size, time.Hour, rigOptions{})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.protect(ctx, "m", img, "p", ""); err != nil {
		return res, err
	}
	pt, _, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return res, err
	}
	targetDir, err := r.addTarget(ctx, targetName, dir)
	if err != nil {
		return res, err
	}
	if profile {
		if err := r.restart(ctx, true); err != nil {
			return res, err
		}
		if pt, _, err = r.waitPoint(ctx, "m", pt.ID, b.cfg.Poll, time.Hour); err != nil {
			return res, err
		}
	}
	if err := b.timedFailover(ctx, r, targetDir, img, &res, "--target", targetName, "--point", "latest-processed"); err != nil {
		return res, err
	}
	if got := res.job.Machines[0].PointID; got != pt.ID {
		return res, fmt.Errorf("latest-processed failed over to point %d, want the newest, %d", got, pt.ID)
	}
	r.close()
	res.profiles = r.profiles
	if profile {
		return res, nil
	}
	if err := dropCaches(); err != nil {
		return res, err
	}
	if res.cp, err = cpSparse(ctx, img, filepath.Join(dir, "copy.img")); err != nil {
		return res, err
	}
	b.log.Info("failover materialize", "run", i, "took", res.took.Round(time.Millisecond), "cp", res.cp.Round(time.Millisecond))
	return res, nil
}

// rtoRun runs the staged-failover case once for a disk of size bytes: the
// target added first, the machine protected with it, its first point
// staged; then rtoWrites bytes of random 4 KiB writes (the same writes,
// below cfg.Size, for every disk size) and `ferry failover m --wait` timed:
// point latest, a fresh cycle carrying the writes, the staged replica moved
// to it and started. With profile the processes are restarted under
// --cpu-profile once the first point is staged; the cycle an agent runs
// when it starts, and its staging, are awaited before the writes.
func (b *bench) rtoRun(ctx context.Context, i int, size int64, profile bool) (res failoverRun, err error) {
	name := fmt.Sprintf("rto-%dm-%d", size>>20, i)
	if profile {
		name = "rto-profile"
	}
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
	targetDir, err := r.addTarget(ctx, targetName, dir)
	if err != nil {
		return res, err
	}
	if err := r.protectTo(ctx, "m", img, "p", "", targetName); err != nil {
		return res, err
	}
	pt, _, err := r.waitPoint(ctx, "m", 0, b.cfg.Poll, time.Hour)
	if err != nil {
		return res, err
	}
	if res.staged, err = r.waitStaged(ctx, targetDir, "m", pt.ID, b.cfg.Poll, time.Hour); err != nil {
		return res, err
	}
	if profile {
		if err := r.restart(ctx, true); err != nil {
			return res, err
		}
		if pt, _, err = r.waitPoint(ctx, "m", pt.ID, b.cfg.Poll, time.Hour); err != nil {
			return res, err
		}
		if res.staged, err = r.waitStaged(ctx, targetDir, "m", pt.ID, b.cfg.Poll, time.Hour); err != nil {
			return res, err
		}
	}
	ws, err := b.applyWrites(img, b.cfg.Size, rtoDelta, float64(rtoWrites)/float64(b.cfg.Size))
	if err != nil {
		return res, err
	}
	offs := make([]int64, len(ws))
	for i, w := range ws {
		offs[i] = w.Offset
	}
	res.changed = len(touchedBlocks(offs, workload.WriteSize, b.cfg.BlockSize))
	if err := b.timedFailover(ctx, r, targetDir, img, &res); err != nil {
		return res, err
	}
	if got := res.job.Machines[0].PointID; got <= res.staged {
		return res, fmt.Errorf("failover latest used point %d, not a fresh one after the staged point %d", got, res.staged)
	}
	r.close()
	res.profiles = r.profiles
	b.log.Info("failover RTO", "run", i, "disk", sizeName(size), "took", res.took.Round(time.Millisecond))
	return res, nil
}

func (b *bench) caseMaterialize(ctx context.Context) error {
	var runs []failoverRun
	for i := 1; i <= b.cfg.Runs; i++ {
		res, err := b.materializeRun(ctx, i, false)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		runs = append(runs, res)
	}
	took, cp := failoverSecs(runs, func(r failoverRun) time.Duration { return r.took }), failoverSecs(runs, func(r failoverRun) time.Duration { return r.cp })
	b.rows = append(b.rows, row{Case: "failover materialize (first, unstaged)", Unit: unitSeconds, Ferry: took, Anchor: cp,
		AnchorName: "cp --sparse=always + sync", Target: 1.5, TargetText: "≤ 1.5 × cp", Pass: passMaterialize})
	alloc, _, err := treeSize(b.pristine)
	if err != nil {
		return err
	}
	s := section{Title: "failover materialize (XFS, first failover, nothing staged)"}
	s.addf("- Each run: a reflink clone of the %d MiB image (%.0f MB allocated) protected without a target by a fresh controller and agent (policy rp-every 1h), its first point; then a target on the same agent (`ferry targets add %s --agent %s --dir RUN/target`, exec driver: start writes `running` to a file, status prints it) and, from a cold page cache, `ferry failover m --target %s --point latest-processed --wait` timed from the command to its exit 0: no fresh cycle, the whole point written into a new sparse disk set (verified BLAKE3 per block, zero blocks left as holes, one fsync), promoted to live, started.",
		b.cfg.Size>>20, float64(alloc)/1e6, targetName, agentName, targetName)
	s.addf("- The failed-over disk RUN/target/m/live/%s.raw is compared byte for byte with the image after each run: equal. Anchor: `cp --sparse=always --reflink=never img copy && sync` on the same XFS, from a cold page cache (--reflink=never: coreutils 9 would otherwise clone the extents and copy nothing).", diskName)
	s.addf("- failover, s: %s; cp, s: %s", runsText(unitSeconds, took), runsText(unitSeconds, cp))
	for i, r := range runs {
		s.addf("- run %d: %s; %s; failed-over disk %.1f MB allocated; %s", i+1, jobSteps(r.job), strings.Join(r.job.Notes, "; "), float64(r.alloc)/1e6,
			r.use.describe(r.took))
	}
	b.details = append(b.details, s)
	return nil
}

func (b *bench) caseRTO(ctx context.Context) error {
	small, big := b.cfg.Size, b.cfg.RTOSize
	var smalls, bigs []failoverRun
	for i := 1; i <= b.cfg.Runs; i++ {
		for _, size := range []int64{small, big} {
			res, err := b.rtoRun(ctx, i, size, false)
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
	took := func(r failoverRun) time.Duration { return r.took }
	smallT, bigT := failoverSecs(smalls, took), failoverSecs(bigs, took)
	b.rows = append(b.rows, row{Case: fmt.Sprintf("failover RTO (staged), %s vs %s disk", sizeName(big), sizeName(small)), Unit: unitSeconds,
		Ferry: bigT, Anchor: smallT, AnchorName: sizeName(small) + " disk", Target: 1.2,
		TargetText: fmt.Sprintf("%s ≤ 1.2 × %s", sizeName(big), sizeName(small)), Pass: passRTO})
	s := section{Title: "failover RTO (XFS, staged replica)"}
	s.addf("- Each run, for a %s and a %s disk (a reflink clone of the %s image, the larger one extended with a hole by truncate), a fresh controller and agent: a target on the same agent (as in the materialize case) added first, the machine protected with `--target %s` (policy rp-every 1h), its first point staged (RUN/target/m/staged/state.json holds it, no move in flight).",
		sizeName(small), sizeName(big), sizeName(small), targetName)
	s.addf("- Then %d MiB of random 4 KiB writes (`workload.Delta`/`Apply`, seed %d, one fsync; the same offsets below %s and the same data for both disks: %d writes touching %d blocks of %d KiB) and, from a cold page cache, `ferry failover m --wait` timed from the command to its exit 0: point latest, so a fresh cycle carrying the writes, then the staged replica moved to that point, promoted and started (the driver's status prints running). The failed-over disk is compared byte for byte with the image: equal.",
		rtoWrites>>20, b.deltaSeed(rtoDelta), sizeName(small), rtoWrites/workload.WriteSize, smalls[0].changed, b.cfg.BlockSize>>10)
	s.addf("- The ratio is the median of the per-run ratios %s / %s; the anchor column is the %s disk's RTO.", sizeName(big), sizeName(small), sizeName(small))
	s.addf("- RTO, s: %s disk %s; %s disk %s", sizeName(small), runsText(unitSeconds, smallT), sizeName(big), runsText(unitSeconds, bigT))
	for i := range smalls {
		for k, r := range []failoverRun{smalls[i], bigs[i]} {
			s.addf("- run %d, %s disk: %s; %s; %s; proxy %.1f MB; failed-over disk %.1f MB allocated; %s", i+1, sizeName([]int64{small, big}[k]),
				jobSteps(r.job), strings.Join(r.job.Machines[0].Notes, "; "), strings.Join(r.job.Notes, "; "), float64(r.wire)/1e6,
				float64(r.alloc)/1e6, r.use.describe(r.took))
		}
	}
	b.details = append(b.details, s)
	return nil
}

func failoverSecs(runs []failoverRun, f func(failoverRun) time.Duration) []float64 {
	out := make([]float64, len(runs))
	for i, r := range runs {
		out[i] = f(r).Seconds()
	}
	return out
}

// jobSteps says how long each step of a finished job took, from the
// controller's step times: "move 1.23 s, start 0.05 s".
func jobSteps(j api.Job) string {
	var parts []string
	for _, st := range j.Steps {
		if st.State == api.StepSkipped || st.Started.IsZero() || st.Ended.IsZero() {
			parts = append(parts, st.Name+" "+st.State)
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", st.Name, unitSeconds.format(st.Ended.Sub(st.Started).Seconds())))
	}
	return "job steps: " + strings.Join(parts, ", ")
}

// sizeName prints a disk size: "16 GiB", "256 MiB".
func sizeName(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
