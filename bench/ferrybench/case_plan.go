package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/workload"
)

// The plan RTO case: a recovery plan of planMachineCount small machines in
// planGroupCount groups fails over in one job (groups in order, a group's
// machines in parallel). Its anchor is what failing the machines over one
// by one would cost if each group waited only for its slowest machine: the
// sum over the groups of the slowest single failover of the group.
const (
	planMachineCount = 20
	planGroupCount   = 4
	planDiskSize     = 32 << 20
	// planWriteShare of every disk is rewritten between staging and the
	// failovers (random 4 KiB writes): each failover moves that much.
	planWriteShare = 0.02
	planName       = "bench"
)

// planRTORun is what one run of the case measured.
type planRTORun struct {
	plan    time.Duration   // `ferry failover --plan bench --wait`
	singles []time.Duration // the twin machines' single failovers, by index
	anchor  time.Duration   // planAnchor(singles)
	job     api.Job
	jobs    []api.Job // the single failovers' jobs
	// CPU time of the controller and the agent during the singles and
	// during the plan: where a group's parallel members spend the cores.
	singlesCPU, planCPU [2]time.Duration
	profiles            []profileFile // with profile: the plan's profiles
	syscalls            string        // with profile: system-call times during the plan (perf trace -s)
}

// planAnchor is the sum over the groups (machines i*n/g … of each) of the
// slowest single failover in the group.
func planAnchor(singles []time.Duration, groups int) time.Duration {
	var sum time.Duration
	n := len(singles)
	for g := range groups {
		sum += slices.Max(singles[g*n/groups : (g+1)*n/groups])
	}
	return sum
}

// planRTORun protects two sets of planMachineCount machines (p-K and
// s-K, the same images) on one rig, stages them, rewrites planWriteShare
// of every disk, fails the s machines over one by one (timed each), then
// the p machines as the plan (timed), and checks every failed-over disk
// against its image. With profile the processes are restarted under
// --cpu-profile once every first point is staged (the cycles the agent
// runs when it starts, and their staging, are awaited), and the singles
// are skipped: the profiles cover that start-up and the plan.
func (b *bench) planRTORun(ctx context.Context, i int, profile bool) (res planRTORun, err error) {
	name := fmt.Sprintf("plan-rto-%d", i)
	if profile {
		name = "plan-rto-profile"
	}
	dir, logs, err := b.runDir(b.xfs, name)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	r, _, err := b.imageRig(ctx, dir, logs, b.cfg.Size, time.Hour, rigOptions{})
	if err != nil {
		return res, err
	}
	defer r.close()
	targetDir, err := r.addTarget(ctx, targetName, dir)
	if err != nil {
		return res, err
	}
	imgs := map[string]string{}
	var plan api.Plan
	plan.Name = planName
	plan.Groups = make([]api.PlanGroup, planGroupCount)
	for k := range planMachineCount {
		for _, set := range []string{"p", "s"} {
			name := fmt.Sprintf("%s-%d", set, k)
			img := filepath.Join(dir, name+".img")
			if set == "p" {
				err = workload.WriteImage(img, uint64(1000+k), planDiskSize)
			} else {
				err = reflinkCopy(imgs[fmt.Sprintf("p-%d", k)], img) // the twin: the same bytes, no space
			}
			if err != nil {
				return res, err
			}
			imgs[name] = img
			if err := r.protectTo(ctx, name, img, "p", "", targetName); err != nil {
				return res, err
			}
			if set == "p" {
				g := &plan.Groups[k*planGroupCount/planMachineCount]
				g.Machines = append(g.Machines, name)
			}
		}
	}
	staged := map[string]int64{}
	for name := range imgs {
		pt, _, err := r.waitPoint(ctx, name, 0, b.cfg.Poll, time.Hour)
		if err != nil {
			return res, err
		}
		if staged[name], err = r.waitStaged(ctx, targetDir, name, pt.ID, b.cfg.Poll, time.Hour); err != nil {
			return res, err
		}
	}
	if profile {
		if err := r.restart(ctx, true); err != nil {
			return res, err
		}
		for name := range imgs {
			pt, _, err := r.waitPoint(ctx, name, staged[name], b.cfg.Poll, time.Hour)
			if err != nil {
				return res, err
			}
			if _, err := r.waitStaged(ctx, targetDir, name, pt.ID, b.cfg.Poll, time.Hour); err != nil {
				return res, err
			}
		}
	}
	// Each set rewrites its disks with its own delta: with one delta for
	// both, a twin's fresh cycle found every block stored by the other's
	// (all 142 deduped), so the plan shipped nothing while the singles
	// shipped everything.
	for name, img := range imgs {
		seed := b.deltaSeed(300)
		if strings.HasPrefix(name, "s-") {
			seed = b.deltaSeed(301)
		}
		if err := workload.Apply(img, seed, workload.Delta(seed, planDiskSize, planWriteShare)); err != nil {
			return res, err
		}
	}
	if _, err := r.cl.CreatePlan(ctx, plan); err != nil {
		return res, err
	}
	cpu0 := r.cpu()
	for k := range planMachineCount {
		if profile {
			break
		}
		name := fmt.Sprintf("s-%d", k)
		took, job, err := r.failover(ctx, name)
		if err != nil {
			return res, fmt.Errorf("failover %s: %w", name, err)
		}
		res.singles = append(res.singles, took)
		res.jobs = append(res.jobs, job)
	}
	cpu1 := r.cpu()
	if !profile {
		res.anchor = planAnchor(res.singles, planGroupCount)
	}
	var trace *syscallTrace
	if profile {
		if trace, err = startSyscallTrace([]int{r.ctl.cmd.Process.Pid, r.agent.cmd.Process.Pid}, filepath.Join(logs, "plan-syscalls.txt")); err != nil {
			return res, err
		}
	}
	bin, args := r.cli("--json", "failover", "--plan", planName, "--wait")
	took, out, err := timed(ctx, bin, args...)
	if profile {
		s, terr := trace.stop(8)
		if terr != nil {
			return res, terr
		}
		res.syscalls = s
	}
	if err != nil {
		return res, fmt.Errorf("failover --plan: %w", err)
	}
	cpu2 := r.cpu()
	for i := range cpu0 {
		res.singlesCPU[i], res.planCPU[i] = cpu1[i]-cpu0[i], cpu2[i]-cpu1[i]
	}
	res.plan = took
	if err := json.Unmarshal([]byte(out), &res.job); err != nil {
		return res, fmt.Errorf("ferry --json failover --plan printed %q: %w", out, err)
	}
	if res.job.State != api.JobSucceeded {
		return res, fmt.Errorf("plan job %s ended %s: %s", res.job.ID, res.job.State, res.job.Error)
	}
	for name, img := range imgs {
		if profile && strings.HasPrefix(name, "s-") {
			continue // not failed over
		}
		if err := sameContent(img, filepath.Join(targetDir, name, "live", diskName+".raw")); err != nil {
			return res, err
		}
	}
	if profile {
		r.close()
		res.profiles = r.profiles
	}
	b.log.Info("plan RTO", "run", i, "plan", took.Round(time.Millisecond), "anchor", res.anchor.Round(time.Millisecond))
	return res, nil
}

func (b *bench) casePlanRTO(ctx context.Context) error {
	var runs []planRTORun
	for i := 1; i <= b.cfg.Runs; i++ {
		res, err := b.planRTORun(ctx, i, false)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		runs = append(runs, res)
	}
	plan, anchor := make([]float64, len(runs)), make([]float64, len(runs))
	for i, r := range runs {
		plan[i], anchor[i] = r.plan.Seconds(), r.anchor.Seconds()
	}
	b.rows = append(b.rows, row{Case: fmt.Sprintf("plan RTO, %d machines in %d groups", planMachineCount, planGroupCount), Unit: unitSeconds,
		Ferry: plan, Anchor: anchor, AnchorName: "Σ groups' slowest single failover", Target: 1.5, TargetText: "≤ 1.5 × Σ slowest", Pass: passPlan})
	s := section{Title: "plan RTO (XFS, staged replicas)"}
	s.addf("- Each run, one controller and agent (a target on the same agent, as in the RTO case): %d machines p-K and their %d twins s-K, each a %s disk of seeded data protected with the target (rp-every 1h), first point staged; then %.0f %% of every disk rewritten with random 4 KiB writes (one delta for the p set, another for the s set, so that no block one set ships is stored already by the other).",
		planMachineCount, planMachineCount, sizeName(planDiskSize), 100*planWriteShare)
	s.addf("- The s machines fail over one by one (`ferry failover s-K --wait`, point latest: a fresh cycle, the move, the start), each timed; the anchor is the sum over %d groups of %d machines of each group's slowest. Then the p machines, as plan %q (the same groups), fail over in one job: `ferry failover --plan %s --wait`, timed from the command to its exit. Every failed-over disk equals its image.",
		planGroupCount, planMachineCount/planGroupCount, planName, planName)
	s.addf("- plan, s: %s; anchor, s: %s", runsText(unitSeconds, plan), runsText(unitSeconds, anchor))
	for i, r := range runs {
		s.addf("- run %d: %s", i+1, jobSteps(r.job))
		s.addf("  - CPU (controller, agent): singles %s, %s; plan %s, %s: during the plan %.0f %% of the %d cores busy with the two, %s per member",
			r.singlesCPU[0], r.singlesCPU[1], r.planCPU[0], r.planCPU[1], 100*busyShare(r.planCPU[0]+r.planCPU[1], r.plan, runtime.NumCPU()), runtime.NumCPU(),
			((r.planCPU[0] + r.planCPU[1]) / planMachineCount).Round(time.Millisecond))
		s.addf("  - single failovers, each step's median/max over the machines: %s", machineStepStats(singleSteps(r.jobs)))
		s.addf("  - plan members, each step's median/max over the machines: %s", machineStepStats(r.job.Machines))
	}
	b.details = append(b.details, s)
	return nil
}

// busyShare is the share of n cores that cpu seconds of CPU time kept busy
// over wall seconds: below 1 on a CPU-bound run means a core waited.
func busyShare(cpu, wall time.Duration, n int) float64 {
	if wall <= 0 || n <= 0 {
		return 0
	}
	return cpu.Seconds() / wall.Seconds() / float64(n)
}

// cpu is the CPU time the rig's controller and agent have used so far.
func (r *rig) cpu() (out [2]time.Duration) {
	for i, p := range []*proc{r.ctl, r.agent} {
		if p == nil || p.cmd.Process == nil {
			continue
		}
		if u, err := procUsage(p.cmd.Process.Pid); err == nil {
			out[i] = u.CPU
		}
	}
	return out
}

// singleSteps turns single-machine jobs into machines with the job's steps.
func singleSteps(jobs []api.Job) []api.JobMachine {
	var out []api.JobMachine
	for _, j := range jobs {
		out = append(out, api.JobMachine{Name: j.ID, Steps: j.Steps})
	}
	return out
}

// machineStepStats prints, for each step name in order of first sight, the
// median and the slowest duration over the machines that ran it.
func machineStepStats(ms []api.JobMachine) string {
	var names []string
	by := map[string][]float64{}
	for _, m := range ms {
		for _, st := range m.Steps {
			if st.Started.IsZero() || st.Ended.IsZero() {
				continue
			}
			if _, ok := by[st.Name]; !ok {
				names = append(names, st.Name)
			}
			by[st.Name] = append(by[st.Name], st.Ended.Sub(st.Started).Seconds())
		}
	}
	var parts []string
	for _, n := range names {
		v := by[n]
		slices.Sort(v)
		parts = append(parts, fmt.Sprintf("%s %.3f/%.3f s", n, v[len(v)/2], v[len(v)-1]))
	}
	return strings.Join(parts, ", ")
}
