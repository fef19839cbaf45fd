package agent

import "github.com/ferrydr/ferry/protocol/rpc"

// handleUpgrade registers the controller's upgrade request on the agent's
// RPC surface. (Being built in the agent-installation issue.)
func (a *Agent) handleUpgrade(m *rpc.Mux) {}
