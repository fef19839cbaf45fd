package agent

import (
	"context"
	"errors"
	"maps"
	"os"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

type cycleResult struct {
	point int64
	err   error
}

type trigger struct {
	app   bool
	reply chan cycleResult
}

// machineLoop replicates one machine: a cycle every rp_every (an
// app-consistent one every app_every), or at once when the controller asks.
type machineLoop struct {
	a       *Agent
	trigger chan trigger
	update  chan msg.MachineConfig
	cancel  context.CancelFunc
	done    chan struct{}

	mu  sync.Mutex
	cfg msg.MachineConfig
}

func (m *machineLoop) config() msg.MachineConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

// driver is the machine's source driver with the job context added.
func (m *machineLoop) driver(env map[string]string) *driver.Exec {
	cfg := m.config()
	e := maps.Clone(cfg.Env)
	if e == nil {
		e = map[string]string{}
	}
	maps.Copy(e, env)
	return &driver.Exec{Commands: driver.Commands(cfg.Driver), Env: e}
}

func (a *Agent) machine(name string) *machineLoop {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.machines[name]
}

// applyConfig starts, updates and stops machine loops to match the
// controller's desired state.
func (a *Agent) applyConfig(ms []msg.MachineConfig) {
	a.mu.Lock()
	defer a.mu.Unlock()
	want := map[string]msg.MachineConfig{}
	for _, m := range ms {
		want[m.Name] = m
	}
	for name, ml := range a.machines {
		if _, ok := want[name]; !ok {
			ml.cancel()
			delete(a.machines, name)
			a.log.Info("machine no longer replicated", "machine", name)
			go a.forget(name, ml)
		}
	}
	for name, cfg := range want {
		if ml, ok := a.machines[name]; ok {
			if !reflect.DeepEqual(ml.config(), cfg) {
				// The loop reads the latest config when it wakes (or at its
				// next cycle when busy): a wake-up already queued must not
				// bring back an older config.
				ml.mu.Lock()
				ml.cfg = cfg
				ml.mu.Unlock()
				select {
				case ml.update <- cfg:
				default:
				}
			}
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		ml := &machineLoop{a: a, cfg: cfg, trigger: make(chan trigger), update: make(chan msg.MachineConfig, 1),
			cancel: cancel, done: make(chan struct{})}
		a.machines[name] = ml
		a.log.Info("machine replicated", "machine", name, "disks", len(cfg.Disks), "every", cfg.RPEvery)
		go ml.run(ctx)
	}
}

// forget removes what replication of a machine kept on this host — its
// views (kept reflink clones and btrfs snapshots grow towards full copies
// as the source changes), its block maps and its block devices' pinned
// write trackers — once its loop has ended,
// unless the machine came back meanwhile. Protecting it again starts with
// a hash resync, never a full copy.
func (a *Agent) forget(name string, ml *machineLoop) {
	<-ml.done
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, back := a.machines[name]; back {
		return
	}
	a.tracking.stop(&name)
	a.dropBlockTrackers(ml.config())
	a.taker.RemoveAll(name, snapDisks(ml.config()))
	if err := os.RemoveAll(a.state.MachineDir(name)); err != nil {
		a.log.Warn("removing the block maps of a machine no longer replicated failed", "machine", name, "err", err)
	}
}

func (a *Agent) stopMachines() {
	a.mu.Lock()
	ms := maps.Clone(a.machines)
	a.machines = map[string]*machineLoop{}
	a.mu.Unlock()
	for _, ml := range ms {
		ml.cancel()
		<-ml.done
	}
}

func (m *machineLoop) run(ctx context.Context) {
	defer close(m.done)
	a := m.a
	cfg := m.config()
	log := a.log.With("machine", cfg.Name)
	a.taker.Cleanup(cfg.Name, snapDisks(cfg))
	var lastCycle, lastApp time.Time
	retry := time.Duration(0)
	patches := true
	for {
		cfg = m.config()
		wait := time.Until(lastCycle.Add(cfg.RPEvery))
		if retry > 0 {
			wait = retry
		}
		// Paused (the controller stopped replication, e.g. during a
		// failover): only a new config or a trigger wakes the loop.
		var due <-chan time.Time
		if !cfg.Paused {
			due = time.After(max(wait, 0))
		}
		var t *trigger
		select {
		case <-ctx.Done():
			return
		case <-m.update:
			if c := m.config(); !slices.Equal(c.Disks, cfg.Disks) {
				// A disk added or removed, or a new block size (machines
				// update): cycle now rather than at the next interval, so
				// the new disk (or every disk) is protected without waiting.
				lastCycle = time.Time{}
			}
			continue
		case tr := <-m.trigger:
			t = &tr
		case <-due:
		}
		// Wait for a session. A trigger comes over one, but that session
		// may not be the current one yet (or any more): answer it rather
		// than leave its caller waiting.
		sess, changed := a.currentSession()
		if sess == nil {
			if t != nil {
				t.reply <- cycleResult{err: protocol.Errorf(protocol.CodeUnavailable, "machine %s: the agent has no live session with the controller yet", cfg.Name)}
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		app := cfg.AppEvery > 0 && (lastApp.IsZero() || time.Since(lastApp) >= cfg.AppEvery)
		if t != nil {
			app = t.app
		}
		start := a.cfg.Now()
		point, err := m.cycle(ctx, cfg, app, patches)
		if t != nil {
			t.reply <- cycleResult{point: point, err: err}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var pe *protocol.Error
			if errors.As(err, &pe) && pe.Code == protocol.CodeFailedPrecondition {
				patches = false // a patch met a different base: send whole blocks next time
			}
			retry = min(max(2*retry, time.Second), max(cfg.RPEvery, 5*time.Second), 30*time.Second)
			log.Warn("cycle failed", "err", err, "retry_in", retry)
			m.report(ctx, msg.ReportRequest{Phase: "error", Error: err.Error()})
			continue
		}
		retry, patches = 0, true
		lastCycle = start
		if app {
			lastApp = start
		}
	}
}

// report tells the controller how replication goes (best effort).
func (m *machineLoop) report(ctx context.Context, r msg.ReportRequest) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r.Machine = m.config().Name
	m.a.call(ctx, msg.MethodReport, r, &struct{}{})
}

func snapDisks(cfg msg.MachineConfig) []snapshot.Disk {
	out := make([]snapshot.Disk, len(cfg.Disks))
	for i, d := range cfg.Disks {
		out[i] = snapshot.Disk{Name: d.Name, Path: d.Path}
	}
	return out
}
