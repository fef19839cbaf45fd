package main

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// Profiled reruns: the phase behind a MISS runs once more with
// --cpu-profile on the agent and the controller, both started (or
// restarted, keeping their data) right before the phase and stopped with
// SIGTERM right after it, so each profile covers that phase (and the
// processes' start-up; after a restart, also the cycle an agent runs when
// it starts: the measured one in the delta passes, an empty one on XFS in
// the churn and storage passes).
const (
	passInitial = "initial sync"
	passDelta   = "delta cycle (reflink path)"
	passScan    = "delta cycle (hash-scan path)"
	passRPO     = "churn"
	passStorage = "10 delta cycles"
	passDedup   = "protecting the clones"
	// The failover passes restart the processes under --cpu-profile before
	// the timed failover and wait for the cycle an agent runs when it
	// starts (and, with a target, its staging): the profiles cover that
	// start-up and the failover.
	passMaterialize = "first failover (unstaged)"
	passRTO         = "staged failover of the large disk"
	// The plan pass restarts the processes under --cpu-profile once every
	// machine is staged and runs the plan alone (no singles).
	passPlan = "plan failover"
)

var passOrder = []string{passInitial, passDelta, passScan, passRPO, passStorage, passDedup, passMaterialize, passRTO, passPlan}

// passResult is what one profiled rerun gives the report: its profiles, a
// line on what it measured, and (some passes) more that it measured.
type passResult struct {
	profiles []profileFile
	what     string
	note     string
}

// runPass runs one profiled rerun.
func (b *bench) runPass(ctx context.Context, pass string) (passResult, error) {
	switch pass {
	case passInitial:
		r, err := b.syncRun(ctx, 0, syncOptions{profile: phaseInitial})
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled initial sync took %s", unitSeconds.format(r.initial.Seconds()))}, err
	case passDelta:
		r, err := b.syncRun(ctx, 0, syncOptions{profile: phaseDelta})
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled delta cycle took %s from the restart (start-up included) and moved %s through the proxy", unitSeconds.format(r.delta.Seconds()), unitBytes.format(float64(r.deltaWire)))}, err
	case passScan:
		r, err := b.scanRun(ctx, 0, phaseDelta)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled hash-scan cycle took %s from the restart, start-up included (cat: %s)", unitSeconds.format(r.cycle.Seconds()), unitSeconds.format(r.cat.Seconds()))}, err
	case passRPO:
		r, err := b.rpoRun(ctx, phaseDelta)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("in the profiled churn p99 was %s", unitSeconds.format(percentile(r.samples, 99)))}, err
	case passStorage:
		r, err := b.storageRun(ctx, phaseDelta)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled rerun left %s", r.repo)}, err
	case passDedup:
		r, err := b.dedupRun(ctx, phaseInitial, 1, false)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled rerun left %s", r.repo)}, err
	case passMaterialize:
		r, err := b.materializeRun(ctx, 0, true)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled failover took %s", unitSeconds.format(r.took.Seconds()))}, err
	case passRTO:
		r, err := b.rtoRun(ctx, 0, b.cfg.RTOSize, true)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled failover of the %s disk took %s", sizeName(b.cfg.RTOSize), unitSeconds.format(r.took.Seconds()))}, err
	case passPlan:
		r, err := b.planRTORun(ctx, 0, true)
		// The blocking profile shows no system calls: the time in them is
		// where the plan's idle core waits (docs/benchmarks.md).
		note := fmt.Sprintf("Time in system calls during the plan (`perf trace -s`, all threads of each process, the Go runtime's parking calls left out; perf slows the run):\n\n```\n%s```", r.syscalls)
		return passResult{profiles: r.profiles, what: fmt.Sprintf("the profiled plan failover took %s", unitSeconds.format(r.plan.Seconds())), note: note}, err
	}
	return passResult{}, fmt.Errorf("no profiled rerun %q", pass)
}

// profileMisses runs the profiled rerun of every row that missed (once per
// rerun, however many rows it explains) and adds the top entries of each
// profile to the report.
func (b *bench) profileMisses(ctx context.Context) error {
	want := map[string][]string{}
	for _, r := range b.rows {
		if !r.pass() && r.Pass != "" {
			want[r.Pass] = append(want[r.Pass], r.Case)
		}
	}
	var errs []string
	for _, pass := range passOrder {
		cases, ok := want[pass]
		if !ok {
			continue
		}
		b.log.Info("profiling a MISS", "rerun", pass)
		res, err := b.runPass(ctx, pass)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Sprintf("%s: %v", pass, err))
			continue
		}
		s := section{Title: fmt.Sprintf("Profile of the MISS of %s: %s", strings.Join(cases, ", "), pass)}
		s.addf("Rerun once under `--cpu-profile`; %s. Profiles (kept): %s.", res.what, profilePaths(res.profiles))
		if res.note != "" {
			s.addf("\n%s", res.note)
		}
		for _, p := range res.profiles {
			for _, view := range []struct{ name, flag string }{{"flat", ""}, {"cumulative", "-cum"}} {
				top, err := pprofTop(ctx, p, b.cfg.TopN, view.flag)
				if err != nil {
					errs = append(errs, fmt.Sprintf("%s: %v", p.Path, err))
					continue
				}
				s.addf("\n%s, top %d by %s time:\n\n```\n%s\n```", p.Proc, b.cfg.TopN, view.name, top)
			}
			// Beside each CPU profile the binaries write the blocking
			// profile (internal/profiling): what the idle cores waited on.
			// Only the data path's goroutines: the idle background loops
			// (listeners, timers, keepalives) wait the whole run and would
			// fill the top.
			bp := p
			bp.Path += ".block"
			if top, err := pprofTop(ctx, bp, b.cfg.TopN, "-cum", "-focus="+dataPathFocus); err == nil {
				s.addf("\n%s, top %d by cumulative time blocked in the data path (channels, selects, locks; `%s`):\n\n```\n%s\n```", p.Proc, b.cfg.TopN, bp.Path, top)
			}
		}
		b.profiles = append(b.profiles, s)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func profilePaths(ps []profileFile) string {
	var out []string
	for _, p := range ps {
		out = append(out, "`"+p.Path+"`")
	}
	return strings.Join(out, ", ")
}

// dataPathFocus names the packages of replication, storage and restore,
// for the blocking profile's -focus.
const dataPathFocus = `ingest|storage|ship|cycle|apply|restore|failover`

// pprofTop is `go tool pprof -top` of a profile, without the lines that
// only name the file and build.
func pprofTop(ctx context.Context, p profileFile, n int, flags ...string) (string, error) {
	if st, err := os.Stat(p.Path); err != nil || st.Size() == 0 {
		return "", fmt.Errorf("no profile written at %s", p.Path)
	}
	args := []string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}
	for _, f := range flags {
		if f != "" {
			args = append(args, f)
		}
	}
	out, err := command(ctx, "go", append(args, p.Bin, p.Path)...)
	if err != nil {
		return "", err
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if strings.HasPrefix(l, "File: ") || strings.HasPrefix(l, "Build ID: ") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n"), nil
}
