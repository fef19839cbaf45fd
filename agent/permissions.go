package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Running commands on this host for the controller is the host owner's
// decision, not any controller admin's: plan scripts and exec driver
// commands run only when the agent was installed, enrolled or run with
// --allow-plan-scripts / --allow-exec-drivers. enroll and install record
// the choice in the state directory (permissionsFile), so that `run` on it
// keeps it; run's own flags add to it for that run.

// permissionsFile holds the recorded msg.Permissions.
const permissionsFile = "permissions.json"

// SavePermissions records what an agent of this state directory allows.
func SavePermissions(dir string, p msg.Permissions) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, permissionsFile), append(b, '\n'), 0o600)
}

// LoadPermissions reads what the state directory records; none when it
// records nothing.
func LoadPermissions(dir string) (msg.Permissions, error) {
	var p msg.Permissions
	b, err := os.ReadFile(filepath.Join(dir, permissionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("agent state %s: %w", permissionsFile, err)
	}
	return p, nil
}

// permission is one thing an agent may be allowed to run.
type permission struct {
	what string // in the refusal: "plan scripts are not allowed …"
	flag string
	has  func(msg.Permissions) bool
}

var (
	permPlanScripts = permission{"plan scripts", "--allow-plan-scripts", func(p msg.Permissions) bool { return p.PlanScripts }}
	permExecDrivers = permission{"exec driver commands", "--allow-exec-drivers", func(p msg.Permissions) bool { return p.ExecDrivers }}
)

// allow returns nil when the agent may run what p names, else the named
// refusal the controller shows.
func (a *Agent) allow(p permission) error {
	if p.has(a.perms) {
		return nil
	}
	return protocol.Errorf(protocol.CodeFailedPrecondition, "%s are not allowed on agent %s: install or run it with %s",
		p.what, a.name(), p.flag)
}

// name is the agent's enrolled name ("this agent" before it has state).
func (a *Agent) name() string {
	if a.state == nil {
		return "(not enrolled)"
	}
	return a.state.Identity.Name
}
