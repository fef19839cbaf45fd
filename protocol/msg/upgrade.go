package msg

// Agent upgrades (controller → agent). An upgrade is a small transaction
// between the controller, the agent and the agent's supervisor (the
// service process, see the installer package):
//
//  1. MethodUpgrade: the agent downloads the named file from the
//     controller's /dist, checks its SHA-256 and that it runs and reports
//     Version, records the upgrade as staged and exits so that its
//     supervisor swaps the binaries and starts the new one on trial.
//  2. The controller waits for the agent to reconnect and asks
//     MethodUpgradeStatus which version runs and what became of the upgrade.
//  3. MethodUpgradeCommit: the controller confirms the new version; the
//     supervisor ends the trial. Without a commit before the trial ends, or
//     if the new binary exits, the supervisor restores the previous binary
//     and records the upgrade as rolled back.
const (
	MethodUpgrade       = "agent.upgrade"        // stage a new binary and restart into it
	MethodUpgradeStatus = "agent.upgrade.status" // the running version and the last upgrade's record
	MethodUpgradeCommit = "agent.upgrade.commit" // the controller confirms the running version
)

// Upgrade states as the agent records them (UpgradeRecord.State).
const (
	UpgradeStaged     = "staged"      // downloaded and checked; the agent is restarting into it
	UpgradeTrial      = "trial"       // the new binary runs; the controller has not confirmed it yet
	UpgradeCommitted  = "committed"   // the controller confirmed the new binary
	UpgradeRolledBack = "rolled-back" // the new binary failed; the previous one runs again
	UpgradeFailed     = "failed"      // nothing was changed (the swap itself failed)
)

// UpgradeRequest asks the agent to upgrade to Version, downloading File
// from the controller's /dist/ and checking it against SHA256 (hex).
type UpgradeRequest struct {
	Version string `json:"version"`
	File    string `json:"file"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
}

// UpgradeResponse says what the agent did with an UpgradeRequest.
type UpgradeResponse struct {
	// State is UpgradeStaged (the agent restarts now) or "current" (it
	// already runs Version and did nothing).
	State       string `json:"state"`
	FromVersion string `json:"from_version"`
}

// UpgradeStatusResponse is MethodUpgradeStatus: what runs, and the record
// of the last upgrade (nil when there was none).
type UpgradeStatusResponse struct {
	Version  string         `json:"version"`
	Platform string         `json:"platform"`
	Last     *UpgradeRecord `json:"last,omitempty"`
}

// UpgradeRecord is the agent's durable record of its last upgrade, shared
// between the agent and its supervisor through the state directory.
type UpgradeRecord struct {
	State string `json:"state"`
	From  string `json:"from"`
	To    string `json:"to"`
	// Binary is the path the service runs; Staged holds the new binary until
	// the swap, Previous the old one until the upgrade is committed.
	Binary   string `json:"binary"`
	Staged   string `json:"staged"`
	Previous string `json:"previous"`
	Error    string `json:"error,omitempty"`
	// Unix seconds: when the upgrade was staged, and when its trial ends.
	StagedAt   int64 `json:"staged_at"`
	TrialUntil int64 `json:"trial_until,omitempty"`
}

// UpgradeCommitRequest confirms that the agent runs Version.
type UpgradeCommitRequest struct {
	Version string `json:"version"`
}
