package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/faultnet"
)

// rig is one controller and one enrolled agent whose every byte passes
// through a counting proxy, all living in one directory. A WAN rig
// (rigOptions.wan) has no proxy: its processes run in two sites of a
// network lab and its bytes are counted by the lab's router.
type rig struct {
	bin    string
	dir    string // data: controller data and agent state
	logDir string // logs and CPU profiles (kept after the run)
	data   string // controller data directory (its repository is data/repository)
	state  string // agent state directory
	name   string // agent name
	ctl    *proc
	agent  *proc
	// extra are further agents (addAgent), each with its own identity.
	extra   []*proc
	ctlAddr string
	admin   string
	proxy   *faultnet.Proxy
	wan     *wanLink // nil: loopback through the proxy
	cl      *admin.Client
	starts  int
	// agentEnv is added to the agent's environment (GODEBUG=gctrace=1 in
	// the memory case).
	agentEnv  []string
	agentArgs []string // added to `ferry-agent run`
	stall     time.Duration
	// profiles written by processes started with profiling, with the
	// binary that wrote each: profile path → binary path.
	profiles []profileFile
}

type profileFile struct {
	Proc, Path, Bin string
}

var listeningRE = regexp.MustCompile(`listening on (\S+)`)

// agentName is the name a rig's agent enrolls with.
const agentName = "bench-agent"

// rigOptions shape a rig's processes.
type rigOptions struct {
	profile   bool          // run both under --cpu-profile from the start
	agentEnv  []string      // added to the agent's environment
	agentArgs []string      // added to `ferry-agent run`
	blockSize int           // the policy's block size (0: Config.BlockSize)
	stall     time.Duration // see stallGuard (0: DefaultConfig's)
	// imageDir, when set, holds the image (a copy: another filesystem)
	// instead of the rig's directory (a reflink clone).
	imageDir string
	// wan, when set, runs the controller and the agent in two sites of a
	// network lab, the agent dialling the controller's address across it
	// (no proxy; the lab's router counts the bytes).
	wan *wanLink
}

// startRig starts a controller, a proxy in front of it and an agent
// enrolled through the proxy, and waits until the agent is connected. Data
// lives in dir, logs and profiles in logDir.
func startRig(ctx context.Context, bin, dir, logDir string, o rigOptions) (r *rig, err error) {
	r = &rig{bin: bin, dir: dir, logDir: logDir, data: filepath.Join(dir, "ctl"), state: filepath.Join(dir, "agent"), name: agentName,
		agentEnv: o.agentEnv, agentArgs: o.agentArgs, stall: o.stall, wan: o.wan}
	if r.stall <= 0 {
		r.stall = DefaultConfig().Stall
	}
	profile := o.profile
	r.admin = filepath.Join(r.data, "admin.sock")
	if len(r.admin) > 100 {
		return nil, fmt.Errorf("admin socket path %s is too long for a Unix socket: use a shorter -work", r.admin)
	}
	for _, d := range []string{r.data, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if err = r.startController(ctx, profile); err != nil {
		return r, err
	}
	dial := r.ctlAddr
	if r.wan == nil {
		if r.proxy, err = faultnet.Listen(r.ctlAddr, nil); err != nil {
			return r, err
		}
		dial = r.proxy.Addr()
	} else if err = r.wan.startCounting(); err != nil {
		return r, err
	}
	tok, err := r.cl.CreateToken(ctx, api.CreateTokenRequest{TTL: api.Duration(time.Hour), Uses: 1})
	if err != nil {
		return r, fmt.Errorf("create token: %w", err)
	}
	enroll, enrollArgs := r.wan.agentCmd(filepath.Join(bin, "ferry-agent"), "enroll", "--controller", dial,
		"--token", tok.Token, "--name", r.name, "--state-dir", r.state)
	out, err := exec.CommandContext(ctx, enroll, enrollArgs...).CombinedOutput()
	if err != nil {
		return r, &CmdError{Cmd: "ferry-agent enroll", Output: string(out), Err: err}
	}
	if err = r.startAgent(ctx, profile); err != nil {
		return r, err
	}
	return r, nil
}

func (r *rig) logPath(what string) string {
	return filepath.Join(r.logDir, fmt.Sprintf("%s-%d.log", what, r.starts))
}

// startController starts `ferry serve` (on the address it had, after a
// restart, so the proxy's target stays right).
func (r *rig) startController(ctx context.Context, profile bool) error {
	r.starts++
	listen := r.ctlAddr
	if listen == "" {
		listen = r.wan.listen()
	}
	// debug: the cycle timings pair "cycle begins" (a debug line: the info
	// log says one line per cycle) with "point committed".
	args := []string{"serve", "--data", r.data, "--listen", listen, "--admin-socket", r.admin, "--log-level", "debug"}
	if profile {
		p := filepath.Join(r.logDir, fmt.Sprintf("controller-%d.prof", r.starts))
		args = append(args, "--cpu-profile", p)
		r.profiles = append(r.profiles, profileFile{Proc: "controller (ferry serve)", Path: p, Bin: filepath.Join(r.bin, "ferry")})
	}
	bin, args := r.wan.ctlCmd(filepath.Join(r.bin, "ferry"), args...)
	p, err := startProc("controller", r.logPath("controller"), nil, bin, args...)
	if err != nil {
		return err
	}
	r.ctl = p
	m, err := p.waitOutput(ctx, listeningRE, 60*time.Second)
	if err != nil {
		return err
	}
	r.ctlAddr = m[1]
	if r.cl == nil {
		if r.cl, err = admin.NewClient(admin.ClientConfig{Address: r.admin}); err != nil {
			return err
		}
	}
	return nil
}

// startAgent starts `ferry-agent run` and waits until the controller lists
// it as connected.
func (r *rig) startAgent(ctx context.Context, profile bool) error {
	// The benchmarks' machines and targets use exec driver commands.
	args := append([]string{"run", "--state-dir", r.state, "--log-level", "info", "--allow-exec-drivers"}, r.agentArgs...)
	if profile {
		p := filepath.Join(r.logDir, fmt.Sprintf("agent-%d.prof", r.starts))
		args = append(args, "--cpu-profile", p)
		r.profiles = append(r.profiles, profileFile{Proc: "agent (ferry-agent run)", Path: p, Bin: filepath.Join(r.bin, "ferry-agent")})
	}
	bin, args := r.wan.agentCmd(filepath.Join(r.bin, "ferry-agent"), args...)
	p, err := startProc("agent", r.logPath("agent"), r.agentEnv, bin, args...)
	if err != nil {
		return err
	}
	r.agent = p
	err = poll(ctx, 60*time.Second, 50*time.Millisecond, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("agent exited (log %s)", p.logPath)
		}
		as, err := r.cl.Agents(ctx)
		if err != nil {
			return false, nil // the controller may still be opening
		}
		for _, a := range as {
			if a.Name == r.name && a.Connected {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("agent never connected: %w", err)
	}
	return nil
}

// restart stops both processes (SIGTERM: profiles are flushed) and starts
// them again on the same data, optionally profiling from now on.
func (r *rig) restart(ctx context.Context, profile bool) error {
	r.stopProcs()
	if err := r.startController(ctx, profile); err != nil {
		return err
	}
	return r.startAgent(ctx, profile)
}

func (r *rig) stopProcs() {
	for _, p := range r.extra {
		p.stop(30 * time.Second)
	}
	r.extra = nil
	if r.agent != nil {
		r.agent.stop(30 * time.Second)
	}
	if r.ctl != nil {
		r.ctl.stop(60 * time.Second)
	}
}

// close stops everything the rig started.
func (r *rig) close() {
	r.stopProcs()
	if r.proxy != nil {
		r.proxy.Close()
	}
}

// wire is every byte the proxy forwarded so far, both directions (a WAN
// rig: every byte that crossed the lab's router from and to the agent's
// site since the rig started).
func (r *rig) wire() (total, up int64) {
	if r.wan != nil {
		return r.wan.wire()
	}
	u, d := r.proxy.Bytes()
	return u + d, u
}

func (r *rig) createPolicy(ctx context.Context, name string, every time.Duration, blockSize int) error {
	p := api.DefaultPolicy(name)
	p.RPEvery, p.BlockSize = api.Duration(every), blockSize
	if _, err := r.cl.CreatePolicy(ctx, p); err != nil {
		return fmt.Errorf("create policy %s: %w", name, err)
	}
	return nil
}

// setRPEvery changes a policy's frequency. The controller pushes the new
// configuration to the agent before it answers; from a long rp-every to 1s
// this is how a cycle is triggered now (the machine loop's next cycle is
// due at once).
func (r *rig) setRPEvery(ctx context.Context, policy string, every time.Duration) error {
	d := api.Duration(every)
	if _, err := r.cl.UpdatePolicy(ctx, policy, api.PolicyUpdate{RPEvery: &d}); err != nil {
		return fmt.Errorf("update policy %s: %w", policy, err)
	}
	return nil
}

// protect protects a one-disk machine; status, if set, is its --status
// command.
func (r *rig) protect(ctx context.Context, machine, path, policy, status string) error {
	return r.protectTo(ctx, machine, path, policy, status, "")
}

// addAgent enrolls one more agent named name through the proxy, starts
// it and waits until the controller lists it as connected. Each agent has
// its own certificate: a tenant of its own.
func (r *rig) addAgent(ctx context.Context, name string) error {
	state := filepath.Join(r.dir, "agent-"+name)
	tok, err := r.cl.CreateToken(ctx, api.CreateTokenRequest{TTL: api.Duration(time.Hour), Uses: 1})
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(r.bin, "ferry-agent"), "enroll", "--controller", r.proxy.Addr(),
		"--token", tok.Token, "--name", name, "--state-dir", state).CombinedOutput()
	if err != nil {
		return &CmdError{Cmd: "ferry-agent enroll", Output: string(out), Err: err}
	}
	p, err := startProc("agent-"+name, r.logPath("agent-"+name), r.agentEnv, filepath.Join(r.bin, "ferry-agent"),
		"run", "--state-dir", state, "--log-level", "info", "--allow-exec-drivers")
	if err != nil {
		return err
	}
	r.extra = append(r.extra, p)
	return poll(ctx, 60*time.Second, 50*time.Millisecond, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("agent %s exited (log %s)", name, p.logPath)
		}
		as, err := r.cl.Agents(ctx)
		if err != nil {
			return false, nil
		}
		for _, a := range as {
			if a.Name == name && a.Connected {
				return true, nil
			}
		}
		return false, nil
	})
}

// protectAs protects a machine on the named agent (no target).
func (r *rig) protectAs(ctx context.Context, agent, machine, path, policy string) error {
	_, err := r.cl.Protect(ctx, api.ProtectRequest{
		Machine: machine, Agent: agent, Policy: policy,
		Disks: []api.DiskRef{{Name: diskName, Path: path}},
	})
	if err != nil {
		return fmt.Errorf("protect %s on %s: %w", machine, agent, err)
	}
	return nil
}

// protectTo is protect with a target (--target; "" for none): the
// controller then keeps the machine's staged replica there.
func (r *rig) protectTo(ctx context.Context, machine, path, policy, status, target string) error {
	_, err := r.cl.Protect(ctx, api.ProtectRequest{
		Machine: machine, Agent: r.name, Policy: policy, Target: target,
		Disks:  []api.DiskRef{{Name: diskName, Path: path}},
		Driver: api.Driver{Status: status},
	})
	if err != nil {
		return fmt.Errorf("protect %s: %w", machine, err)
	}
	return nil
}

// waitPoint polls the machine's points every period until the newest has
// an id above after, and returns it with the moment it was first listed. It
// fails when replication stalls (see stallGuard) or after timeout.
func (r *rig) waitPoint(ctx context.Context, machine string, after int64, period, timeout time.Duration) (api.Point, time.Time, error) {
	var got api.Point
	var at time.Time
	err := r.waitPoints(ctx, machine, period, timeout, func(ps []api.Point, now time.Time) bool {
		if len(ps) > 0 && ps[len(ps)-1].ID > after {
			got, at = ps[len(ps)-1], now
			return true
		}
		return false
	})
	if err != nil {
		return got, at, fmt.Errorf("waiting for a point of %s after %d: %w", machine, after, err)
	}
	return got, at, nil
}

// waitPoints polls the machine's points every period until done says so;
// now is the moment the list was returned.
func (r *rig) waitPoints(ctx context.Context, machine string, period, timeout time.Duration, done func(ps []api.Point, now time.Time) bool) error {
	guard := r.newStallGuard()
	return poll(ctx, timeout, period, func() (bool, error) {
		if err := r.alive(); err != nil {
			return false, err
		}
		ps, err := r.cl.Points(ctx, machine)
		now := time.Now()
		if err != nil {
			return false, fmt.Errorf("points list %s: %w", machine, err)
		}
		if done(ps, now) {
			return true, nil
		}
		return false, guard.check()
	})
}

// alive fails once any Ferry process (extra agents included) has exited.
func (r *rig) alive() error {
	if r.agent.exited() || r.ctl.exited() || slices.ContainsFunc(r.extra, (*proc).exited) {
		return fmt.Errorf("a Ferry process exited (logs in %s)", r.logDir)
	}
	return nil
}

// ErrStalled means replication stopped making progress while a point was
// awaited.
var ErrStalled = errors.New("replication stalled")

// stallBytes is the least traffic through the proxy, per stall period,
// that counts as progress (session keepalives are a few bytes a minute).
const stallBytes = 64 << 10

// stallGuard turns a hang of the system under test into a prompt failure
// with evidence instead of a bench that waits for its timeout.
type stallGuard struct {
	r     *rig
	last  int64
	since time.Time
	read  time.Time // when the wire was last read
}

func (r *rig) newStallGuard() *stallGuard {
	w, _ := r.wire()
	now := time.Now()
	return &stallGuard{r: r, last: w, since: now, read: now}
}

// check fails once fewer than stallBytes went through the proxy during the
// last stall period; it first makes both processes print every
// goroutine's stack into their logs (SIGQUIT), for whoever fixes the hang.
func (g *stallGuard) check() error {
	// A reading a second is plenty against a period of minutes, and a WAN
	// rig's reading runs nft twice: not at every poll.
	if time.Since(g.read) < time.Second {
		return nil
	}
	w, _ := g.r.wire()
	g.read = time.Now()
	if w-g.last >= stallBytes {
		g.last, g.since = w, time.Now()
		return nil
	}
	if time.Since(g.since) < g.r.stall {
		return nil
	}
	g.r.dumpStacks()
	return fmt.Errorf("%w: fewer than %d bytes through the proxy in %s; the goroutine stacks of both processes are at the end of %s and %s",
		ErrStalled, stallBytes, g.r.stall, g.r.agent.logPath, g.r.ctl.logPath)
}

// dumpStacks sends SIGQUIT to both processes (the Go runtime prints every
// goroutine's stack to stderr, which is the log, and exits) and waits.
func (r *rig) dumpStacks() {
	for _, p := range []*proc{r.agent, r.ctl} {
		if p != nil && !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		}
	}
	for _, p := range []*proc{r.agent, r.ctl} {
		if p != nil {
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				p.stop(time.Second)
			}
		}
	}
}

// logLines are the lines of process what ("controller" or "agent") whose
// msg is one of msgs, over every start so far.
func (r *rig) logLines(what string, msgs ...string) ([]logLine, error) {
	var out []logLine
	for i := 1; i <= r.starts; i++ {
		ls, err := readLog(filepath.Join(r.logDir, fmt.Sprintf("%s-%d.log", what, i)), msgs...)
		if err != nil && !os.IsNotExist(err) {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

// cycleRecord reads, from the logs, how long the controller took over the
// cycle of point id of machine (cycle begins → point committed) and the
// agent's "point made" line for it.
func (r *rig) cycleRecord(machine string, id int64) (time.Duration, logLine, error) {
	ctlLines, err := r.logLines("controller", "cycle begins", "point committed")
	if err != nil {
		return 0, nil, err
	}
	made, err := r.logLines("agent", "point made")
	if err != nil {
		return 0, nil, err
	}
	var line logLine
	for _, l := range made {
		if p, err := l.Int("point"); err == nil && p == id {
			line = l
		}
	}
	return cycleTimes(ctlLines, machine)[id], line, nil
}

// diskName is the name of the one disk of every machine a rig protects.
const diskName = "d0"

// cli is the `ferry` command line args against this rig's controller:
// the binary and its arguments.
func (r *rig) cli(args ...string) (string, []string) {
	return filepath.Join(r.bin, "ferry"), append([]string{"--admin", r.admin}, args...)
}

// exportPoint writes a point's disk with the CLI (`ferry points export`)
// and returns the raw file's path.
func (r *rig) exportPoint(ctx context.Context, machine string, point int64, dir string) (string, error) {
	bin, args := r.cli("points", "export", machine, "--point", fmt.Sprint(point), "--out", dir)
	if _, err := command(ctx, bin, args...); err != nil {
		return "", err
	}
	return filepath.Join(dir, diskName+".raw"), nil
}

// rigUsage is what both Ferry processes consumed so far, and, to account
// for the rest of the machine's cores, what this bench process (the
// counting proxy every agent byte crosses, and the churn writer where a
// case runs one) and the machine as a whole used.
type rigUsage struct {
	agent, ctl, bench usage
	machine           cpuTimes
}

func (r *rig) usage() (rigUsage, error) {
	a, err1 := procUsage(r.agent.pid())
	c, err2 := procUsage(r.ctl.pid())
	self, err3 := procUsage(os.Getpid())
	m, err4 := machineCPU()
	return rigUsage{agent: a, ctl: c, bench: self, machine: m}, errors.Join(err1, err2, err3, err4)
}

func (u rigUsage) sub(v rigUsage) rigUsage {
	return rigUsage{agent: u.agent.sub(v.agent), ctl: u.ctl.sub(v.ctl), bench: u.bench.sub(v.bench), machine: u.machine.sub(v.machine)}
}

// describe says how busy a phase of wall time kept the processes: CPU
// seconds of each, in cores, and the bytes each made the disks move. Then
// the whole machine's account of the same wall time (/proc/stat), so that
// cores the two processes left idle are seen either busy elsewhere (the
// proxy, kernel writeback and loopback workers) or idle, and how much of
// the idle time had a disk request outstanding.
func (u rigUsage) describe(wall time.Duration) string {
	busy := (u.agent.CPU + u.ctl.CPU).Seconds() / wall.Seconds()
	s := fmt.Sprintf("CPU agent %.2f s + controller %.2f s in %.2f s wall = %.2f of %d cores busy; disk: agent read %.1f MB, controller read %.1f MB and wrote %.1f MB",
		u.agent.CPU.Seconds(), u.ctl.CPU.Seconds(), wall.Seconds(), busy, runtime.NumCPU(),
		float64(u.agent.ReadBytes)/1e6, float64(u.ctl.ReadBytes)/1e6, float64(u.ctl.WriteBytes)/1e6)
	if u.machine.total() > 0 {
		s += "; " + u.machine.account(u.agent.CPU+u.ctl.CPU, u.bench.CPU)
	}
	return s
}

// cycle is one measured cycle: its point, the wall time from the trigger
// to the point being listed, and what the processes consumed meanwhile.
type cycle struct {
	point    api.Point
	took     time.Duration
	use      rigUsage
	wire, up int64 // proxy bytes, both ways and agent → controller
}

// oneCycle makes the agent run one cycle of machine (whose newest point is
// after) and times it to the moment `points list` shows its point. The
// trigger is the policy update rp-every 1h → 1s (see setRPEvery); the
// policy goes back to 1h once the point is listed. With profile, the
// processes are instead restarted under --cpu-profile: an agent's machine
// loop runs a cycle as soon as it starts, so the profiles cover start-up
// and that one cycle, and the time includes the start-up.
func (r *rig) oneCycle(ctx context.Context, machine, policy string, after int64, period time.Duration, profile bool) (cycle, error) {
	var c cycle
	u0, err := r.usage()
	if err != nil {
		return c, err
	}
	w0, up0 := r.wire()
	t0 := time.Now()
	if profile {
		if err := r.restart(ctx, true); err != nil {
			return c, err
		}
		u0.agent, u0.ctl = usage{}, usage{} // new processes: count from their start
	} else if err := r.setRPEvery(ctx, policy, time.Second); err != nil {
		return c, err
	}
	pt, t1, err := r.waitPoint(ctx, machine, after, period, time.Hour)
	if err != nil {
		return c, err
	}
	w1, up1 := r.wire()
	c.point, c.took, c.wire, c.up = pt, t1.Sub(t0), w1-w0, up1-up0
	u1, err := r.usage()
	if err != nil {
		return c, err
	}
	c.use = u1.sub(u0)
	if !profile {
		err = r.setRPEvery(ctx, policy, time.Hour)
	}
	return c, err
}

// imageRig is the start of most cases: a reflink clone of the pristine
// image as dir/disk.img (grown sparse to size when larger), a rig with o
// (the stall guard from the config), and policy "p" with a point every
// rpEvery at the configured block size.
func (b *bench) imageRig(ctx context.Context, dir, logs string, size int64, rpEvery time.Duration, o rigOptions) (*rig, string, error) {
	img := filepath.Join(dir, "disk.img")
	if o.imageDir != "" {
		img = filepath.Join(o.imageDir, "disk.img")
		if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", "--reflink=never", b.pristine, img).CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("copy the image to %s: %v: %s", o.imageDir, err, out)
		}
	} else if err := reflinkCopy(b.pristine, img); err != nil {
		return nil, "", err
	}
	if size > b.cfg.Size {
		if err := os.Truncate(img, size); err != nil {
			return nil, "", err
		}
	}
	o.stall = b.cfg.Stall
	r, err := startRig(ctx, b.cfg.Bin, dir, logs, o)
	if err != nil {
		return nil, "", err
	}
	bs := b.cfg.BlockSize
	if o.blockSize > 0 {
		bs = o.blockSize
	}
	if err := r.createPolicy(ctx, "p", rpEvery, bs); err != nil {
		r.close()
		return nil, "", err
	}
	return r, img, nil
}
