package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
)

// handleDrill serves a boot drill's console reads and probes. The probe
// runs here, on the recovery host, because only this host reaches the test
// machine: its console log and its isolated test network.
func (a *Agent) handleDrill(m *rpc.Mux) {
	m.Handle(msg.MethodDrillConsole, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.DrillConsoleRequest](body)
		if err != nil {
			return nil, err
		}
		return readConsole(req)
	})
	m.Handle(msg.MethodDrillProbe, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.DrillProbeRequest](body)
		if err != nil {
			return nil, err
		}
		return runProbe(ctx, req)
	})
}

func consolePath(ref msg.TargetRef) (string, error) {
	dir, err := apply.SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return "", protocol.Errorf(protocol.CodeInvalid, "%v", err)
	}
	return filepath.Join(dir, msg.ConsoleLogName), nil
}

func readConsole(req msg.DrillConsoleRequest) (msg.DrillConsoleResponse, error) {
	p, err := consolePath(req.Ref)
	if err != nil {
		return msg.DrillConsoleResponse{}, err
	}
	out := msg.DrillConsoleResponse{Path: p}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	defer f.Close()
	out.Exists = true
	// The marker is searched in the whole log (a boot prints it once, and
	// much may follow); the tail is what a report keeps.
	b, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return out, err
	}
	out.Found = req.Marker != "" && strings.Contains(string(b), req.Marker)
	out.Tail = string(b[max(0, len(b)-msg.DrillConsoleTail):])
	return out, nil
}

// runProbe runs a drill probe here (the controller runs it the same way
// for an exec target).
func runProbe(ctx context.Context, req msg.DrillProbeRequest) (msg.DrillProbeResponse, error) {
	if req.Timeout <= 0 {
		req.Timeout = time.Minute
	}
	if req.Port > 0 {
		addr := net.JoinHostPort(req.Addr, strconv.Itoa(req.Port))
		d := net.Dialer{Timeout: min(req.Timeout, 10*time.Second)}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return msg.DrillProbeResponse{Output: err.Error(), ExitCode: 1}, nil
		}
		c.Close()
		return msg.DrillProbeResponse{Output: "connected to " + addr}, nil
	}
	env := map[string]string{}
	for k, v := range req.Env {
		env[k] = v
	}
	if req.Ref != nil {
		p, err := consolePath(*req.Ref)
		if err != nil {
			return msg.DrillProbeResponse{}, err
		}
		env["FERRY_CONSOLE"] = p
	}
	out, err := driver.RunShell(ctx, req.Command, env, req.Timeout, "probe")
	if len(out) > msg.DrillConsoleTail {
		out = out[len(out)-msg.DrillConsoleTail:]
	}
	resp := msg.DrillProbeResponse{Output: out}
	if err != nil {
		resp.ExitCode = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			resp.ExitCode = ee.ExitCode()
		}
		if resp.ExitCode == -1 {
			resp.Output += "\n" + err.Error()
		}
	}
	return resp, nil
}
