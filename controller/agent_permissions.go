package controller

import (
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// An agent runs plan scripts and exec driver commands only when its owner
// allowed them (agent/permissions.go). The agent enforces it; the
// controller refuses early — when a plan action, a machine or a target is
// set up — what a connected agent said it does not allow, so the refusal
// comes at configuration time instead of in the middle of a failover. An
// agent that is not connected is checked by the agent itself when the
// command runs.

// agentPermission is one thing an agent may allow.
type agentPermission struct {
	what string
	flag string
	has  func(msg.Permissions) bool
}

var (
	allowPlanScripts = agentPermission{"plan scripts", "--allow-plan-scripts", func(p msg.Permissions) bool { return p.PlanScripts }}
	allowExecDrivers = agentPermission{"exec driver commands", "--allow-exec-drivers", func(p msg.Permissions) bool { return p.ExecDrivers }}
)

// refusedByAgent is the agent's refusal, worded as the agent words it,
// when the connected agent said it does not allow p; nil otherwise.
func (s *Server) refusedByAgent(agentID, agentName string, p agentPermission) error {
	c, ok := s.agents.get(agentID)
	if !ok {
		return nil
	}
	perms := c.permissions()
	if perms == nil || p.has(*perms) {
		return nil
	}
	return api.Errorf(api.CodeFailedPrecondition, "%s are not allowed on agent %s: install or run it with %s", p.what, agentName, p.flag)
}
