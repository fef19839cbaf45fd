package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol/msg"
)

// The supervisor and the agent it runs agree on these.
const (
	// SupervisorEnv is set in the agent's environment to the supervisor's
	// pid: the agent may then upgrade itself (see agent.UpgradeConfig) and
	// takes the end of its stdin as the request to stop.
	SupervisorEnv = "FERRY_AGENT_SUPERVISOR"
	// ExitRestart is the agent's exit status when it staged an upgrade and
	// wants the supervisor to swap the binaries and start it again.
	ExitRestart = 75
)

// SupervisorConfig configures Supervise.
type SupervisorConfig struct {
	// Binary is the agent executable; upgrades swap it.
	Binary string
	// Args are the agent's arguments (run --config FILE).
	Args []string
	// StateDir is where the agent records upgrades.
	StateDir string
	// Trial bounds how long a new binary may run unconfirmed.
	Trial time.Duration
	// StopTimeout bounds a stop before the agent is killed.
	StopTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before restarting an agent
	// that exited on its own.
	MinBackoff, MaxBackoff time.Duration
	// Poll is how often the upgrade record is read during a trial.
	Poll time.Duration
	// Stdout and Stderr receive the agent's output.
	Stdout, Stderr io.Writer
	Logger         *slog.Logger
	Now            func() time.Time
}

// DefaultSupervisorConfig holds the defaults.
func DefaultSupervisorConfig() SupervisorConfig {
	return SupervisorConfig{Trial: DefaultUpgradeTrial, StopTimeout: 20 * time.Second,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second, Poll: 200 * time.Millisecond}
}

// Validate fills defaults and checks the configuration.
func (c *SupervisorConfig) Validate() error {
	if c.Binary == "" || c.StateDir == "" {
		return errors.New("supervisor: the binary and the state directory are required")
	}
	d := DefaultSupervisorConfig()
	for _, f := range []struct{ v, def *time.Duration }{{&c.Trial, &d.Trial}, {&c.StopTimeout, &d.StopTimeout},
		{&c.MinBackoff, &d.MinBackoff}, {&c.MaxBackoff, &d.MaxBackoff}, {&c.Poll, &d.Poll}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

type supervisor struct {
	cfg SupervisorConfig
	log *slog.Logger
}

// child is one run of the agent.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	err   error // the exit, once done is closed
}

// Supervise runs the agent until ctx ends: it restarts the agent when it
// exits (with backoff, at once after ExitRestart), and carries out the
// upgrade the agent staged — swap the binaries, run the new one on trial,
// keep it once the controller commits it, restore the previous binary if
// it exits or the trial runs out first.
func Supervise(ctx context.Context, cfg SupervisorConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s := &supervisor{cfg: cfg, log: cfg.Logger.With("component", "supervisor")}
	backoff := cfg.MinBackoff
	for ctx.Err() == nil {
		trial := s.prepare()
		trialEnd := cfg.Now().Add(cfg.Trial)
		started := cfg.Now()
		c, err := s.start()
		if err != nil {
			if trial != nil {
				s.rollback(trial, fmt.Sprintf("the new binary (%s) did not start: %v", trial.To, err))
				continue
			}
			s.log.Error("cannot start the agent", "binary", cfg.Binary, "err", err)
		} else {
			if trial != nil && !s.watchTrial(ctx, c, trial, trialEnd.Sub(cfg.Now())) {
				if ctx.Err() != nil {
					s.stop(c)
					return nil
				}
				continue // rolled back: start the previous binary at once
			}
			if !s.wait(ctx, c) {
				return nil
			}
			if code := c.cmd.ProcessState.ExitCode(); code == ExitRestart {
				s.log.Info("the agent asked for a restart")
				backoff = cfg.MinBackoff
				continue
			}
			s.log.Warn("the agent exited; restarting it", "err", c.err, "ran", cfg.Now().Sub(started).Round(time.Millisecond), "in", backoff)
			if cfg.Now().Sub(started) > time.Minute {
				backoff = cfg.MinBackoff
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, cfg.MaxBackoff)
	}
	return nil
}

// prepare applies a staged upgrade before the agent starts: it returns the
// record when the binary to start is on trial.
func (s *supervisor) prepare() *msg.UpgradeRecord {
	rec, err := agent.ReadUpgradeRecord(s.cfg.StateDir)
	if err != nil {
		if !errors.Is(err, agent.ErrNoUpgradeRecord) {
			s.log.Error("unreadable upgrade record; starting the agent as it is", "err", err)
		}
		return nil
	}
	switch rec.State {
	case msg.UpgradeStaged:
		if rec.Binary != s.cfg.Binary {
			s.record(rec, msg.UpgradeFailed, fmt.Sprintf("staged for %s, but the service runs %s", rec.Binary, s.cfg.Binary))
			return nil
		}
		if err := os.Rename(rec.Binary, rec.Previous); err != nil {
			s.record(rec, msg.UpgradeFailed, fmt.Sprintf("keep the running binary: %v", err))
			return nil
		}
		if err := os.Rename(rec.Staged, rec.Binary); err != nil {
			if rerr := os.Rename(rec.Previous, rec.Binary); rerr != nil {
				s.log.Error("cannot put the running binary back", "err", rerr)
			}
			s.record(rec, msg.UpgradeFailed, fmt.Sprintf("swap in the new binary: %v", err))
			return nil
		}
		s.log.Info("swapped in the new agent binary; starting it on trial", "from", rec.From, "to", rec.To, "trial", s.cfg.Trial)
	case msg.UpgradeTrial:
		// Started again mid-trial (a service restart, a reboot): a new trial.
		s.log.Info("resuming the trial of the new agent binary", "to", rec.To)
	case msg.UpgradeCommitted:
		if rec.Previous != "" && exists(rec.Previous) {
			os.Remove(rec.Previous) // Windows could not while it ran from it
		}
		return nil
	default:
		return nil
	}
	rec.State, rec.Error = msg.UpgradeTrial, ""
	rec.TrialUntil = s.cfg.Now().Add(s.cfg.Trial).Unix()
	if err := agent.WriteUpgradeRecord(s.cfg.StateDir, rec); err != nil {
		s.log.Error("cannot record the trial", "err", err)
	}
	return rec
}

// record stores an upgrade's end state.
func (s *supervisor) record(rec *msg.UpgradeRecord, state, reason string) {
	rec.State, rec.Error, rec.TrialUntil = state, reason, 0
	if state == msg.UpgradeFailed || state == msg.UpgradeRolledBack {
		s.log.Error("agent upgrade "+state, "from", rec.From, "to", rec.To, "reason", reason)
	}
	if err := agent.WriteUpgradeRecord(s.cfg.StateDir, rec); err != nil {
		s.log.Error("cannot record the upgrade", "err", err)
	}
}

// rollback restores the previous binary (the new one has stopped).
func (s *supervisor) rollback(rec *msg.UpgradeRecord, reason string) {
	if err := replaceFile(rec.Previous, rec.Binary); err != nil {
		reason += fmt.Sprintf("; and restoring the previous binary failed: %v", err)
	}
	s.record(rec, msg.UpgradeRolledBack, reason)
}

// watchTrial waits for the controller's commit of the binary on trial. It
// returns true once committed; false after a rollback, or when ctx ended
// (the trial then resumes with the next start).
func (s *supervisor) watchTrial(ctx context.Context, c *child, rec *msg.UpgradeRecord, left time.Duration) bool {
	deadline := time.NewTimer(left)
	defer deadline.Stop()
	tick := time.NewTicker(s.cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-c.done:
			s.rollback(rec, fmt.Sprintf("the new binary (%s) exited before the controller confirmed it: %v", rec.To, c.err))
			return false
		case <-deadline.C:
			s.stop(c)
			s.rollback(rec, fmt.Sprintf("the controller did not confirm %s within %s", rec.To, s.cfg.Trial))
			return false
		case <-tick.C:
			cur, err := agent.ReadUpgradeRecord(s.cfg.StateDir)
			if err == nil && cur.State == msg.UpgradeCommitted && cur.To == rec.To {
				if err := os.Remove(rec.Previous); err != nil && !errors.Is(err, os.ErrNotExist) {
					s.log.Info("the previous binary stays until the next start", "path", rec.Previous, "err", err)
				}
				s.log.Info("agent upgrade committed", "from", rec.From, "to", rec.To)
				return true
			}
		}
	}
}

// start runs the agent with a pipe for stdin whose end means "stop".
func (s *supervisor) start() (*child, error) {
	cmd := exec.Command(s.cfg.Binary, s.cfg.Args...)
	cmd.Stdout, cmd.Stderr = s.cfg.Stdout, s.cfg.Stderr
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, SupervisorEnv+"=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, SupervisorEnv+"="+strconv.Itoa(os.Getpid()))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	s.log.Info("agent started", "pid", cmd.Process.Pid, "binary", s.cfg.Binary)
	return c, nil
}

// wait returns true when the agent exited on its own, false when ctx
// ended first (the agent is then stopped).
func (s *supervisor) wait(ctx context.Context, c *child) bool {
	select {
	case <-c.done:
		return true
	case <-ctx.Done():
		s.stop(c)
		return false
	}
}

// stop asks the agent to stop (its stdin closes; SIGTERM where there are
// signals) and kills it after StopTimeout.
func (s *supervisor) stop(c *child) {
	c.stdin.Close()
	if sig := stopSignal(); sig != nil {
		c.cmd.Process.Signal(sig)
	}
	select {
	case <-c.done:
		return
	case <-time.After(s.cfg.StopTimeout):
	}
	s.log.Warn("the agent did not stop in time; killing it", "pid", c.cmd.Process.Pid)
	c.cmd.Process.Kill()
	<-c.done
}
