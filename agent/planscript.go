package agent

import (
	"context"
	"strings"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// runPlanScript runs a recovery plan's script action (msg.MethodPlanScript;
// the handler has checked --allow-plan-scripts). A script that fails —
// non-zero exit, timeout — is an error whose text carries the exit and the
// output's last lines, so the controller's job shows why.
func runPlanScript(ctx context.Context, req msg.PlanScriptRequest) (msg.PlanScriptResponse, error) {
	if strings.TrimSpace(req.Command) == "" {
		return msg.PlanScriptResponse{}, protocol.Errorf(protocol.CodeInvalid, "plan script: empty command")
	}
	if req.Timeout < 0 {
		return msg.PlanScriptResponse{}, protocol.Errorf(protocol.CodeInvalid, "plan script: negative timeout %s", req.Timeout)
	}
	res, err := driver.RunScript(ctx, req.Command, req.Env, req.Timeout)
	resp := msg.PlanScriptResponse{Output: res.Output, ExitCode: res.ExitCode}
	if err != nil {
		return resp, protocol.Errorf(protocol.CodeFailedPrecondition, "plan script %q: %v%s", req.Command, err, outputTail(res.Output))
	}
	return resp, nil
}

// maxErrorOutput bounds the output an error carries (an RPC error has no
// body, so a failed script's output reaches the job through its message).
const maxErrorOutput = 4 << 10

// outputTail is the last lines of a script's output for an error message.
func outputTail(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	if len(out) > maxErrorOutput {
		out = "…" + out[len(out)-maxErrorOutput:]
	}
	return ": " + out
}
