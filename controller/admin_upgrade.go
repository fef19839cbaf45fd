package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Bounds of one agent's upgrade, as the controller sees it.
const (
	// upgradeStageTimeout covers the agent's download and checks.
	upgradeStageTimeout = 10 * time.Minute
	// upgradeReturnTimeout is how long the agent may take to come back and
	// settle: longer than the supervisor's trial (60 s by default), so a
	// rollback is seen as one rather than as silence.
	upgradeReturnTimeout = 3 * time.Minute
	upgradePoll          = 100 * time.Millisecond
	upgradeCallTimeout   = 15 * time.Second
	// upgradeParallel bounds how many agents upgrade at once (--all).
	upgradeParallel = 4
)

// Upgrade result states (api.UpgradeResult.State).
const (
	upgradeUpgraded   = "upgraded"
	upgradeCurrent    = "current"
	upgradeFailed     = "failed"
	upgradeRolledBack = "rolled-back"
)

// UpgradeAgents pushes the agent version of --dist to connected agents:
// each downloads its platform's build from /dist, restarts into it under
// its supervisor and is confirmed once it is back running that version; a
// build that fails is rolled back by the agent's supervisor.
func (s *Server) UpgradeAgents(ctx context.Context, req api.UpgradeRequest) ([]api.UpgradeResult, error) {
	if req.All == (req.Agent != "") {
		return nil, api.Errorf(api.CodeInvalid, "name one agent or all")
	}
	rel, err := s.loadDist()
	if err != nil {
		return nil, err
	}
	var targets []catalog.Agent
	if req.All {
		all, err := s.cat.Agents(ctx)
		if err != nil {
			return nil, err
		}
		for _, a := range all {
			if _, ok := s.agents.get(a.ID); ok && !a.Revoked {
				targets = append(targets, a)
			}
		}
	} else {
		a, err := s.cat.Agent(ctx, req.Agent)
		if err != nil {
			return nil, apiErr(err)
		}
		targets = append(targets, a)
	}
	out := make([]api.UpgradeResult, len(targets))
	sem := make(chan struct{}, upgradeParallel)
	var wg sync.WaitGroup
	for i, a := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = s.upgradeAgent(ctx, a, rel)
			s.log.Info("agent upgrade", "agent", a.Name, "from", out[i].FromVersion, "to", out[i].ToVersion,
				"state", out[i].State, "err", out[i].Error)
		})
	}
	wg.Wait()
	return out, nil
}

// upgradeAgent runs one agent's upgrade to its end.
func (s *Server) upgradeAgent(ctx context.Context, a catalog.Agent, rel distRelease) api.UpgradeResult {
	res := api.UpgradeResult{Agent: a.Name, FromVersion: a.Version, ToVersion: rel.version}
	fail := func(state, format string, args ...any) api.UpgradeResult {
		res.State, res.Error = state, fmt.Sprintf(format, args...)
		return res
	}
	if a.Revoked {
		return fail(upgradeFailed, "the agent is revoked")
	}
	conn, ok := s.agents.get(a.ID)
	if !ok {
		return fail(upgradeFailed, "the agent is not connected")
	}
	st, err := s.upgradeStatus(ctx, a)
	if err != nil {
		return fail(upgradeFailed, "ask the agent what it runs: %v", err)
	}
	res.FromVersion = st.Version
	if st.Version == rel.version {
		res.State = upgradeCurrent
		return res
	}
	file := distFile(st.Platform)
	sum, ok := rel.sums[file]
	if !ok {
		return fail(upgradeFailed, "the dist directory has no build for %s (%s is not in SHA256SUMS)", st.Platform, file)
	}
	fi, err := os.Stat(filepath.Join(rel.dir, file))
	if err != nil {
		return fail(upgradeFailed, "dist: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, upgradeStageTimeout)
	var resp msg.UpgradeResponse
	err = s.agents.call(sctx, a.ID, a.Name, msg.MethodUpgrade, msg.UpgradeRequest{
		Version: rel.version, File: file, SHA256: sum, Size: fi.Size(),
	}, &resp)
	cancel()
	var pe *protocol.Error
	switch {
	case errors.As(err, &pe):
		// The agent refused or failed to stage: nothing changed there.
		return fail(upgradeFailed, "%s", pe.Message)
	case err != nil && ctx.Err() != nil:
		return fail(upgradeFailed, "%v", ctx.Err())
	case err != nil:
		// The session may have ended as the agent restarted, before its
		// answer left: what it did is in its record once it is back.
		s.log.Info("agent upgrade: no answer to the stage request; waiting for the agent", "agent", a.Name, "err", err)
	case resp.State == upgradeCurrent:
		res.State = upgradeCurrent
		return res
	}
	return s.awaitUpgrade(ctx, a, conn, rel.version, res)
}

// awaitUpgrade waits for the agent to come back on a new session, then
// confirms the new version or reports the rollback its supervisor made.
func (s *Server) awaitUpgrade(ctx context.Context, a catalog.Agent, old *agentConn, to string, res api.UpgradeResult) api.UpgradeResult {
	ctx, cancel := context.WithTimeout(ctx, upgradeReturnTimeout)
	defer cancel()
	tick := time.NewTicker(upgradePoll)
	defer tick.Stop()
	lastErr := "the agent did not come back"
	for {
		select {
		case <-ctx.Done():
			res.State, res.Error = upgradeFailed, fmt.Sprintf("%s within %s", lastErr, upgradeReturnTimeout)
			return res
		case <-tick.C:
		}
		c, ok := s.agents.get(a.ID)
		if !ok || c == old {
			continue
		}
		st, err := s.upgradeStatus(ctx, a)
		if err != nil {
			lastErr = err.Error()
			continue
		}
		last := st.Last
		switch {
		case st.Version == to:
			cctx, ccancel := context.WithTimeout(ctx, upgradeCallTimeout)
			err := s.agents.call(cctx, a.ID, a.Name, msg.MethodUpgradeCommit, msg.UpgradeCommitRequest{Version: to}, &struct{}{})
			ccancel()
			if err != nil {
				lastErr = fmt.Sprintf("confirm %s: %v", to, err)
				old = c // a new session may still come; wait for it
				continue
			}
			res.State = upgradeUpgraded
			return res
		case last != nil && last.To == to && last.State == msg.UpgradeRolledBack:
			res.State, res.Error = upgradeRolledBack, last.Error
			return res
		case last != nil && last.To == to && last.State == msg.UpgradeFailed:
			res.State, res.Error = upgradeFailed, last.Error
			return res
		case last != nil && last.To == to && (last.State == msg.UpgradeStaged || last.State == msg.UpgradeTrial):
			old = c // between restarts: the supervisor has yet to act
			lastErr = "the upgrade is still " + last.State
		default:
			res.State, res.Error = upgradeFailed, fmt.Sprintf("the agent came back running %s without an upgrade record for %s", st.Version, to)
			return res
		}
	}
}

// upgradeStatus asks a connected agent what it runs and its last upgrade.
func (s *Server) upgradeStatus(ctx context.Context, a catalog.Agent) (msg.UpgradeStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, upgradeCallTimeout)
	defer cancel()
	var st msg.UpgradeStatusResponse
	err := s.agents.call(ctx, a.ID, a.Name, msg.MethodUpgradeStatus, struct{}{}, &st)
	var pe *protocol.Error
	if errors.As(err, &pe) && pe.Code == protocol.CodeNotFound {
		return st, fmt.Errorf("this agent's build cannot be upgraded remotely (%s); reinstall it", pe.Message)
	}
	return st, err
}
