package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The many-machines case (BENCHMARKS.md "many machines"): cfg.ManyMachines
// small machines spread over cfg.ManyAgents agents, each agent a process of
// its own (state directory, certificate) enrolled to the one controller
// through the proxy, all under one policy with a point every manyRPEvery.
// Once every machine has its first point, an idle phase (nothing writes)
// measures what cycles with nothing to ship cost, and a light-churn phase
// (one churn writer per image) samples every machine's RPO.
const (
	manyRPEvery = 5 * time.Second
	manySample  = 500 * time.Millisecond
	manyTarget  = 10.0 // seconds: RPO p99 under light churn
	manyPolicy  = "p"
	// manyProbeCalls is how many back-to-back sampling calls price one.
	manyProbeCalls = 20
	// manyChurnSeed is mixed into each writer's seed (plus its index).
	manyChurnSeed = 0x6d616e79
	// manyOffCPUEvery is how often the churn phase samples the agents'
	// and the writers' threads (sampleOffCPU).
	manyOffCPUEvery = 200 * time.Millisecond
)

// manyPhase is what one phase measured.
type manyPhase struct {
	from, to    time.Time
	took        time.Duration
	points      int                  // points committed during the phase (controller log)
	perMachine  map[string]int       // the same, by machine
	cycles      []float64            // cycle begins → point committed of those points, seconds
	phases      map[string][]float64 // the agents' cycle phases (cyclePhases) of points made in the phase, seconds
	ctl, agents usage                // agents: summed over the agent processes
	self        usage                // this process: the churn writers and the sampling
	machine     cpuTimes             // the whole machine (/proc/stat)
	wire        int64                // proxy bytes, both ways
	// The churn phase only.
	samples []float64          // now − instant of the newest point, every machine, every sample
	worst   map[string]float64 // each machine's largest sample
	lists   []float64          // seconds each sampling call took
	written int64
	stall   time.Duration // the writers' longest single write
	// What the agents' threads and this process's (the writers) were
	// doing, sampled from outside (offCPU.finish).
	agentsOffCPU, writersOffCPU string
}

// manyRun is what one run of the case measured.
type manyRun struct {
	first       time.Duration // first protect call → every machine listed with a point
	firstWire   int64
	idle, churn manyPhase
	// The sampling call priced after the churn: its wall time and the
	// controller's CPU per call (the machines' cycles go on meanwhile).
	probeTook, probeCPU time.Duration
	ctlPeak, agentPeak  int64 // VmHWM of the controller, and of the largest agent
	ctlPeakFirst        int64 // the controller's VmHWM once every first point was listed
}

// mark is the processes' counters at one moment.
type mark struct {
	at                time.Time
	ctl, agents, self usage
	machine           cpuTimes
	wire              int64
}

// agentPIDs are the process IDs of every agent of the rig.
func (r *rig) agentPIDs() []int {
	pids := []int{r.agent.pid()}
	for _, p := range r.extra {
		pids = append(pids, p.pid())
	}
	return pids
}

func (r *rig) mark() (mark, error) {
	m := mark{at: time.Now()}
	var errs []error
	var err error
	m.ctl, err = procUsage(r.ctl.pid())
	errs = append(errs, err)
	for _, pid := range r.agentPIDs() {
		u, err := procUsage(pid)
		errs = append(errs, err)
		m.agents.CPU += u.CPU
		m.agents.ReadBytes += u.ReadBytes
		m.agents.WriteBytes += u.WriteBytes
	}
	m.self, err = procUsage(os.Getpid())
	errs = append(errs, err)
	m.machine, err = machineCPU()
	errs = append(errs, err)
	m.wire, _ = r.wire()
	return m, errors.Join(errs...)
}

// phase is what the processes consumed from m to n (the points are filled
// from the log later).
func (m mark) phase(n mark) manyPhase {
	return manyPhase{from: m.at, to: n.at, took: n.at.Sub(m.at), ctl: n.ctl.sub(m.ctl), agents: n.agents.sub(m.agents), self: n.self.sub(m.self), machine: n.machine.sub(m.machine), wire: n.wire - m.wire}
}

// commitsBetween counts the "point committed" lines logged in [from, to),
// by machine, and the time from each one's "cycle begins" line.
func commitsBetween(lines []logLine, from, to time.Time) (per map[string]int, cycles []float64) {
	per = map[string]int{}
	begun := map[string]time.Time{}
	for _, l := range lines {
		t, err := l.Time()
		if err != nil {
			continue
		}
		m := l["machine"]
		switch l["msg"] {
		case "cycle begins":
			begun[m] = t
		case "point committed":
			if !t.Before(from) && t.Before(to) {
				per[m]++
				if b, ok := begun[m]; ok {
					cycles = append(cycles, t.Sub(b).Seconds())
				}
			}
			delete(begun, m)
		}
	}
	return per, cycles
}

// total sums a count by name.
func total(per map[string]int) int {
	n := 0
	for _, v := range per {
		n += v
	}
	return n
}

// waitListed polls `machines list` until n machines have a point.
func (r *rig) waitListed(ctx context.Context, n int, timeout time.Duration) error {
	return poll(ctx, timeout, 250*time.Millisecond, func() (bool, error) {
		if err := r.alive(); err != nil {
			return false, err
		}
		ms, err := r.cl.Machines(ctx)
		if err != nil {
			return false, fmt.Errorf("machines list: %w", err)
		}
		have := 0
		for _, m := range ms {
			if m.LastPoint != nil {
				have++
			}
		}
		return have >= n, nil
	})
}

func manyMachineName(i int) string { return fmt.Sprintf("m%02d", i+1) }

// manyRun sets the machines up, waits for their first points and runs the
// idle phase, then the light-churn phase, then prices the sampling call.
func (b *bench) manyRun(ctx context.Context, run int) (res manyRun, err error) {
	dir, logs, err := b.runDir(b.xfs, fmt.Sprintf("many-%d", run))
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	imgs, removeImages, err := b.manyImages(ctx, dir)
	if err != nil {
		return res, err
	}
	defer removeImages()
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, rigOptions{stall: b.cfg.Stall})
	if err != nil {
		return res, err
	}
	defer r.close()
	if err := r.createPolicy(ctx, manyPolicy, manyRPEvery, b.cfg.RPOBlockSize); err != nil {
		return res, err
	}
	agents := []string{r.name}
	for k := 2; k <= b.cfg.ManyAgents; k++ {
		name := fmt.Sprintf("%s-%d", agentName, k)
		if err := r.addAgent(ctx, name); err != nil {
			return res, err
		}
		agents = append(agents, name)
	}
	start := time.Now()
	for i, img := range imgs {
		// Machine i is on agent i mod ManyAgents, as manyImages placed it.
		if err := r.protectAs(ctx, agents[i%len(agents)], manyMachineName(i), img, manyPolicy); err != nil {
			return res, err
		}
	}
	if err := r.waitListed(ctx, len(imgs), 15*time.Minute); err != nil {
		return res, fmt.Errorf("waiting for every machine's first point: %w", err)
	}
	res.first = time.Since(start)
	res.firstWire, _ = r.wire()
	res.ctlPeakFirst, _ = procStatus(r.ctl.pid(), "VmHWM")

	m0, err := r.mark()
	if err != nil {
		return res, err
	}
	if err := r.idle(ctx, b.cfg.ManyPhase); err != nil {
		return res, err
	}
	m1, err := r.mark()
	if err != nil {
		return res, err
	}
	res.idle = m0.phase(m1)
	if res.churn, err = b.manyChurn(ctx, r, imgs); err != nil {
		return res, err
	}
	if res.probeTook, res.probeCPU, err = r.probeList(ctx); err != nil {
		return res, err
	}
	res.ctlPeak, _ = procStatus(r.ctl.pid(), "VmHWM")
	for _, p := range append([]*proc{r.agent}, r.extra...) {
		if v, err := procStatus(p.pid(), "VmHWM"); err == nil {
			res.agentPeak = max(res.agentPeak, v)
		}
	}
	lines, err := r.logLines("controller", "cycle begins", "point committed")
	if err != nil {
		return res, err
	}
	for _, ph := range []*manyPhase{&res.idle, &res.churn} {
		ph.perMachine, ph.cycles = commitsBetween(lines, ph.from, ph.to)
		ph.points = total(ph.perMachine)
		if ph.phases, err = r.agentPhases(ph.from, ph.to); err != nil {
			return res, err
		}
	}
	return res, nil
}

// agentPhases reads every agent's "point made" lines logged in [from, to):
// the cycle phases of each point, seconds.
func (r *rig) agentPhases(from, to time.Time) (map[string][]float64, error) {
	paths, err := filepath.Glob(filepath.Join(r.logDir, "agent-*.log"))
	if err != nil {
		return nil, err
	}
	out := map[string][]float64{}
	for _, path := range paths {
		lines, err := readLog(path, "point made")
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if t, err := l.Time(); err != nil || t.Before(from) || !t.Before(to) {
				continue
			}
			for _, ph := range cyclePhases {
				if ms, err := l.Int(ph + "_ms"); err == nil {
					out[ph] = append(out[ph], float64(ms)/1000)
				}
			}
		}
	}
	return out, nil
}

// idle waits d, failing early if a process exits.
func (r *rig) idle(ctx context.Context, d time.Duration) error {
	end := time.Now().Add(d)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for time.Now().Before(end) {
		if err := r.alive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-time.After(time.Until(end)):
		}
	}
	return nil
}

// manyChurn runs one churn writer per image for cfg.ManyPhase and samples,
// every manySample, every machine's (now − instant of its newest point)
// from one `machines list` call.
func (b *bench) manyChurn(ctx context.Context, r *rig, imgs []string) (ph manyPhase, err error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type churned struct {
		n   int64
		err error
	}
	done := make(chan churned, len(imgs))
	stalls := make([]time.Duration, len(imgs)) // each writer's own
	m0, err := r.mark()
	if err != nil {
		return ph, err
	}
	agentsOff := sampleOffCPU(cctx, manyOffCPUEvery, r.agentPIDs)
	writersOff := sampleOffCPU(cctx, manyOffCPUEvery, func() []int { return []int{os.Getpid()} })
	for i, img := range imgs {
		go func() {
			n, err := churn(cctx, img, b.cfg.ManyDiskSize, b.cfg.Seed^manyChurnSeed+uint64(i), b.cfg.ManyRate, b.cfg.ManyPhase, &stalls[i])
			done <- churned{n, err}
		}()
	}
	running := len(imgs)
	var written int64
	var errs []error
	wait := func(c churned) {
		running--
		written += c.n
		if c.err != nil && !errors.Is(c.err, context.Canceled) {
			errs = append(errs, c.err)
		}
	}
	stop := func(err error) error {
		cancel()
		for running > 0 {
			wait(<-done)
		}
		return errors.Join(append(errs, err)...)
	}
	samples, worst, lists := []float64{}, map[string]float64{}, []float64{}
	tick := time.NewTicker(manySample)
	defer tick.Stop()
	for running > 0 {
		select {
		case c := <-done:
			wait(c)
			if len(errs) > 0 {
				return ph, stop(nil)
			}
		case <-ctx.Done():
			return ph, stop(ctx.Err())
		case <-tick.C:
			if err := r.alive(); err != nil {
				return ph, stop(err)
			}
			t0 := time.Now()
			ms, err := r.cl.Machines(ctx)
			now := time.Now()
			if err != nil {
				return ph, stop(fmt.Errorf("machines list during the churn: %w", err))
			}
			lists = append(lists, now.Sub(t0).Seconds())
			for _, m := range ms {
				if m.LastPoint == nil {
					continue
				}
				age := now.Sub(*m.LastPoint).Seconds()
				samples = append(samples, age)
				worst[m.Name] = max(worst[m.Name], age)
			}
		}
	}
	m1, err := r.mark()
	if err != nil {
		return ph, err
	}
	ph = m0.phase(m1)
	ph.agentsOffCPU, ph.writersOffCPU = agentsOff.finish(), writersOff.finish()
	ph.samples, ph.worst, ph.lists, ph.written, ph.stall = samples, worst, lists, written, slices.Max(stalls)
	return ph, nil
}

// probeList makes manyProbeCalls back-to-back sampling calls and returns
// the wall time and the controller's CPU time per call.
func (r *rig) probeList(ctx context.Context) (took, cpu time.Duration, err error) {
	m0, err := r.mark()
	if err != nil {
		return 0, 0, err
	}
	for range manyProbeCalls {
		if _, err := r.cl.Machines(ctx); err != nil {
			return 0, 0, fmt.Errorf("machines list: %w", err)
		}
	}
	m1, err := r.mark()
	if err != nil {
		return 0, 0, err
	}
	ph := m0.phase(m1)
	return ph.took / manyProbeCalls, ph.ctl.CPU / manyProbeCalls, nil
}

// perPoint is d per point (NaN for no points), in seconds.
func perPoint(d time.Duration, points int) float64 {
	if points == 0 {
		return math.NaN()
	}
	return d.Seconds() / float64(points)
}

// expected is the points a phase of d should commit at rp-every.
func (b *bench) manyExpected(d time.Duration) float64 {
	return float64(b.cfg.ManyMachines) * d.Seconds() / manyRPEvery.Seconds()
}

// describe says what a phase committed and cost.
func (ph manyPhase) describe(expected float64) string {
	counts := make([]int, 0, len(ph.perMachine))
	for _, n := range ph.perMachine {
		counts = append(counts, n)
	}
	spread := "none"
	if len(counts) > 0 {
		spread = fmt.Sprintf("%d–%d per machine over %d machines", slices.Min(counts), slices.Max(counts), len(counts))
	}
	s := fmt.Sprintf("%d points committed in %s (%.0f expected: machines × phase ÷ rp-every; %s); controller CPU %.2f s = %s per point (%.2f cores); the agents' CPU %.2f s in all = %s per point; proxy bytes %.2f MB (%.1f KB per point); controller disk writes %.1f MB",
		ph.points, ph.took.Round(time.Millisecond), expected, spread,
		ph.ctl.CPU.Seconds(), unitMillis.format(perPoint(ph.ctl.CPU, ph.points)), ph.ctl.CPU.Seconds()/ph.took.Seconds(),
		ph.agents.CPU.Seconds(), unitMillis.format(perPoint(ph.agents.CPU, ph.points)),
		float64(ph.wire)/1e6, float64(ph.wire)/1e3/float64(max(ph.points, 1)), float64(ph.ctl.WriteBytes)/1e6)
	if len(ph.cycles) > 0 {
		s += fmt.Sprintf("; cycles in the controller's log (cycle begins → point committed): median %.3f s, p99 %.3f s, max %.3f s",
			median(ph.cycles), percentile(ph.cycles, 99), slices.Max(ph.cycles))
	}
	if len(ph.phases) > 0 {
		s += "; the agents' cycle phases (median / max): " + describePhases(ph.phases)
	}
	return s
}

func (b *bench) caseMany(ctx context.Context) error {
	var res manyRun
	var idleCPU, churnCPU, p99s []float64
	var perRun []string
	for i := range b.cfg.Runs {
		var err error
		if res, err = b.manyRun(ctx, i); err != nil {
			return err
		}
		idleCPU = append(idleCPU, perPoint(res.idle.ctl.CPU, res.idle.points))
		churnCPU = append(churnCPU, perPoint(res.churn.ctl.CPU, res.churn.points))
		p99s = append(p99s, percentile(res.churn.samples, 99))
		perRun = append(perRun, fmt.Sprintf("run %d: idle %d points, controller %s per point; churn %d points, controller %s per point, RPO p50 %.2f s, p99 %.2f s, max %.2f s",
			i+1, res.idle.points, unitMillis.format(idleCPU[i]), res.churn.points, unitMillis.format(churnCPU[i]),
			percentile(res.churn.samples, 50), p99s[i], slices.Max(res.churn.samples)))
	}
	what := fmt.Sprintf("many machines (%d on %d agents, rp-every %s)", b.cfg.ManyMachines, b.cfg.ManyAgents, manyRPEvery)
	b.rows = append(b.rows,
		row{Case: what + ": controller CPU per idle cycle", Unit: unitMillis, Ferry: idleCPU, TargetText: "report", Info: true},
		row{Case: what + ": controller CPU per cycle, light churn", Unit: unitMillis, Ferry: churnCPU, TargetText: "report", Info: true},
		row{Case: what + ": RPO p99, light churn", Unit: unitSeconds, Ferry: p99s, Target: manyTarget, TargetText: "p99 ≤ 10 s",
			Note: "p99 of each run: " + runsText(unitSeconds, p99s)})
	s := section{Title: "many machines (XFS)"}
	for _, l := range perRun {
		s.addf("- %s", l)
	}
	s.addf("- the last run in detail:")
	s.addf("- %d machines, each one disk of %d MiB, the same mixed image (seed %d); layout %q: %s; protected round-robin on %d agents (each its own `ferry-agent run` process, state directory and certificate, enrolled through the proxy); one policy, rp-every %s, block size %d KiB, reflink views. The controller logs at debug level, as in every case. Every first point was listed %s after the first protect call; proxy bytes until then %.1f MB.",
		b.cfg.ManyMachines, b.cfg.ManyDiskSize>>20, b.cfg.Seed, b.cfg.ManyLayout, manyLayouts[b.cfg.ManyLayout].what, b.cfg.ManyAgents, manyRPEvery, b.cfg.RPOBlockSize>>10, res.first.Round(time.Millisecond), float64(res.firstWire)/1e6)
	s.addf("- idle (nothing writes, nothing polls): %s", res.idle.describe(b.manyExpected(res.idle.took)))
	c := res.churn
	s.addf("- light churn: one writer per image, random 4 KiB buffered writes at %.1f KB/s each (%.2f MB/s in all), %.1f MB written, the longest single write %.1f ms; every %s one `machines list` call gives every machine's newest point instant: %d samples from %d calls (each call took median %.1f ms, max %.1f ms; the first ten median %.1f ms, the last ten %.1f ms). RPO p50 %.2f s, p99 %.2f s, max %.2f s; the worst machine's largest %.2f s.",
		float64(b.cfg.ManyRate)/1e3, float64(b.cfg.ManyRate)*float64(b.cfg.ManyMachines)/1e6, float64(c.written)/1e6, float64(c.stall.Microseconds())/1000, manySample,
		len(c.samples), len(c.lists), 1000*median(c.lists), 1000*slices.Max(c.lists), 1000*median(c.lists[:min(10, len(c.lists))]), 1000*median(c.lists[max(0, len(c.lists)-10):]),
		percentile(c.samples, 50), percentile(c.samples, 99), slices.Max(c.samples), worstOf(c.worst))
	s.addf("- light churn: %s; this process (the writers and the sampling) used %.2f s of CPU; %s",
		c.describe(b.manyExpected(c.took)), c.self.CPU.Seconds(), c.machine.account(c.ctl.CPU+c.agents.CPU, c.self.CPU))
	s.addf("- light churn, threads sampled every %s from outside (state, and the kernel function of those in uninterruptible sleep): the agents' %s; this process's (the writers) %s",
		manyOffCPUEvery, c.agentsOffCPU, c.writersOffCPU)
	sampling := res.probeCPU * time.Duration(len(c.lists))
	s.addf("- the sampling call, priced after the churn: %d back-to-back `machines list` calls took %.1f ms each and cost the controller %.1f ms of CPU each (the cycles going on meanwhile included); the churn phase's %d calls account for at most %.2f s of its controller CPU, which leaves at least %s per point for the cycles themselves.",
		manyProbeCalls, float64(res.probeTook.Microseconds())/1000, float64(res.probeCPU.Microseconds())/1000, len(c.lists), sampling.Seconds(), unitMillis.format(perPoint(c.ctl.CPU-sampling, c.points)))
	s.addf("- peak RSS (VmHWM): controller %.1f MiB at the end (%.1f MiB once every first point was listed), the largest agent %.1f MiB",
		float64(res.ctlPeak)/(1<<20), float64(res.ctlPeakFirst)/(1<<20), float64(res.agentPeak)/(1<<20))
	b.details = append(b.details, s)
	return nil
}

// worstOf is the largest value of m (0 for none).
func worstOf(m map[string]float64) float64 {
	w := 0.0
	for _, v := range m {
		w = max(w, v)
	}
	return w
}
