package agent

import "github.com/ferrydr/ferry/protocol/rpc"

// UpgradeConfig lets the controller upgrade a running agent. Only an agent
// that a supervisor runs can upgrade: the agent stages the new binary and
// ends; the supervisor swaps the binaries, runs the new one on trial and
// rolls back unless the controller confirms it (msg.MethodUpgrade).
type UpgradeConfig struct {
	// Binary is the executable the supervisor runs and swaps.
	Binary string
	// Restart ends the agent so that its supervisor can swap the binaries.
	// It is called once the upgrade is staged and must not block for long.
	Restart func()
	// MaxSize bounds a download; default 512 MiB.
	MaxSize int64
}

// handleUpgrade registers the controller's upgrade request on the agent's
// RPC surface. (Being built in the agent-installation issue.)
func (a *Agent) handleUpgrade(m *rpc.Mux) {}
