package controller

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
)

// UpgradeAgents pushes the controller's agent version to connected agents.
// (Being built in the agent-installation issue.)
func (s *Server) UpgradeAgents(ctx context.Context, req api.UpgradeRequest) ([]api.UpgradeResult, error) {
	return nil, api.Errorf(api.CodeUnavailable, "agent upgrades are not available in this build yet")
}
