package controller

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"time"

	"github.com/ferrydr/ferry/protocol/msg"
)

// localProbe runs a drill's probe on the controller (exec targets): a TCP
// connect with Port, else Command through /bin/sh with Env added.
func localProbe(ctx context.Context, req msg.DrillProbeRequest) msg.DrillProbeResponse {
	if req.Timeout <= 0 {
		req.Timeout = time.Minute
	}
	if req.Port > 0 {
		if err := dialGuest(ctx, req.Addr, req.Port, min(req.Timeout, 10*time.Second)); err != nil {
			return msg.DrillProbeResponse{Output: err.Error(), ExitCode: 1}
		}
		return msg.DrillProbeResponse{Output: "connected"}
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	c := exec.CommandContext(ctx, "/bin/sh", "-c", req.Command)
	c.Env = os.Environ()
	for k, v := range req.Env {
		c.Env = append(c.Env, k+"="+v)
	}
	c.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	b := out.Bytes()
	resp := msg.DrillProbeResponse{Output: string(b[max(0, len(b)-msg.DrillConsoleTail):])}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		resp.ExitCode = ee.ExitCode()
	default:
		resp.ExitCode = -1
		resp.Output += "\n" + err.Error()
	}
	return resp
}
