package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/storage"
)

// Agents is how the engine reaches agents.
type Agents interface {
	Call(ctx context.Context, agentID, method string, req, resp any) error
	Open(ctx context.Context, agentID string, kind protocol.StreamKind) (*session.Stream, error)
	Connected(agentID string) bool
}

// Engine holds what failover jobs and staging need.
type Engine struct {
	Cat    *catalog.Catalog
	Repo   *storage.Repo
	Agents Agents
	// Push sends an agent its replication configuration again (after a
	// machine is paused or resumed).
	Push func(ctx context.Context, agentID string) error
	Log  *slog.Logger
	Now  func() time.Time
	// Failpoint is a test hook called at named steps (FailMoveMid); nil
	// in production.
	Failpoint func(name string)
	// Started is when the controller started (its jobs resume after it):
	// until Started+SourceGrace every known agent may still be
	// reconnecting. SourceGrace bounds how long `latest` waits for a
	// source agent that is expected back (DefaultSourceGrace if zero).
	Started     time.Time
	SourceGrace time.Duration

	// keys holds, per job, a repository view with the private key given to
	// that job (--key-file). Never persisted: a controller restarted
	// mid-job asks for it again by failing the step with a stated reason.
	keys sync.Map
	// moving holds a *sync.Mutex per machine: the stager and a job never
	// read a set's state and move it at the same time (a job's move built
	// on a state a staging move then changed would be refused).
	moving sync.Map
}

// lockMoves serialises status-then-move sequences on one machine's sets.
func (e *Engine) lockMoves(machine string) func() {
	mu, _ := e.moving.LoadOrStore(machine, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	return mu.(*sync.Mutex).Unlock
}

// SetKey registers the key given to a job.
func (e *Engine) SetKey(jobID string, key []byte) error {
	if len(key) == 0 || !e.Repo.Encrypted() {
		return nil
	}
	k, err := storage.ParsePrivateKeyPEM(key)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "--key-file: %v", err)
	}
	r, err := e.Repo.WithPrivateKey(k)
	if err != nil {
		return api.Errorf(api.CodeInvalid, "--key-file: %v", err)
	}
	e.keys.Store(jobID, r)
	return nil
}

// reader returns the repository to read plaintext from for a job.
func (e *Engine) reader(jobID string) (*storage.Repo, error) {
	if !e.Repo.Encrypted() {
		return e.Repo, nil
	}
	if r, ok := e.keys.Load(jobID); ok {
		return r.(*storage.Repo), nil
	}
	return nil, fmt.Errorf("the repository is encrypted and job %s has no private key (give --key-file; a key is kept in memory only, so a controller restart needs it again)", jobID)
}

// KeyAvailable reports whether plaintext can be read for a job.
func (e *Engine) KeyAvailable(jobID string) bool {
	_, err := e.reader(jobID)
	return err == nil
}

// DropKey forgets a job's key.
func (e *Engine) DropKey(jobID string) { e.keys.Delete(jobID) }

// machineTarget returns a machine's target (the one named, else its
// default) and the target's agent.
func (e *Engine) machineTarget(ctx context.Context, m catalog.Machine, name string) (api.Target, string, error) {
	if name == "" {
		name = m.Target
	}
	if name == "" {
		return api.Target{}, "", refuse("machine %s has no target: give --target or protect it with --target", m.Name)
	}
	t, agentID, err := e.Cat.Target(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return api.Target{}, "", refuse("%w", err)
	}
	return t, agentID, err
}

// driverEnv is the context driver commands receive (CLI.md "Drivers").
func driverEnv(jobID, kind string, m catalog.Machine, t api.Target, point int64, paths []string, test bool, set string) map[string]string {
	env := map[string]string{
		"FERRY_JOB": jobID, "FERRY_KIND": kind, "FERRY_MACHINE": m.Name, "FERRY_TARGET": t.Name,
		"FERRY_POINT": fmt.Sprint(point), "FERRY_DISKS": strings.Join(paths, "\n"),
		"FERRY_TEST": "0", "FERRY_CPUS": fmt.Sprint(m.Spec.CPUs), "FERRY_MEMORY": fmt.Sprint(m.Spec.Memory),
		"FERRY_NICS": strings.Join(m.Spec.NICs, "\n"), "FERRY_SET": set, "FERRY_PLAN": "", "FERRY_GROUP": "", "FERRY_PHASE": "",
	}
	if test {
		env["FERRY_TEST"] = "1"
	}
	return env
}
