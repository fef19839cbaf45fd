package msg

import "time"

// MethodPlanScript runs a recovery plan's script action on an agent. An
// agent refuses it (CodeFailedPrecondition, naming --allow-plan-scripts)
// unless it was installed, enrolled or run with --allow-plan-scripts.
const MethodPlanScript = "plan.script"

// PlanScriptRequest is one script action: run through the platform's
// shell with Env (the FERRY_* context) added to the agent's environment.
type PlanScriptRequest struct {
	Command string            `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	Timeout time.Duration     `json:"timeout"`
}

// PlanScriptResponse is the script's combined output (its tail, bounded)
// and exit code; a non-zero exit is also returned as an error by the
// agent, with this response's output in the job.
type PlanScriptResponse struct {
	Output   string `json:"output"`
	ExitCode int    `json:"exit_code"`
}
