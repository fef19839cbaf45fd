package hyperv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/driver"
)

// ParamsEnv is the environment variable carrying an operation's values.
const ParamsEnv = "FERRY_HYPERV_PARAMS"

// resultPrefix starts the one stdout line a script answers with.
const resultPrefix = "FERRY-RESULT "

// Args are powershell.exe's arguments before the encoded script: the same
// for every operation.
var Args = []string{"-NoLogo", "-NoProfile", "-NonInteractive", "-OutputFormat", "Text", "-EncodedCommand"}

// params are the values a script reads from ParamsEnv (as $p.<json name>).
type params struct {
	Name       string     `json:"name,omitempty"`
	ID         string     `json:"id,omitempty"`
	Generation int        `json:"generation,omitempty"`
	CPUs       int        `json:"cpus,omitempty"`
	Memory     int64      `json:"memory,omitempty"`
	SecureBoot bool       `json:"secureBoot,omitempty"`
	NICs       []nicParam `json:"nics,omitempty"`
	Disks      []string   `json:"disks,omitempty"`
}

type nicParam struct {
	Name   string `json:"name"`
	Switch string `json:"switch"` // "" = not connected
	MAC    string `json:"mac"`    // 12 hex digits; "" = dynamic
}

// result is a script's answer.
type result struct {
	Error    *PSError `json:"error"`
	VMs      []vmInfo `json:"vms"`
	Switches []string `json:"switches"`
	Removed  string   `json:"removed"`
}

// vmInfo is one virtual machine, picked with Select-Object from what Get-VM
// returns (https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vm):
//   - Name: the machine's name (Get-VM's -Name parameter and the Name column
//     of its output);
//   - Id: the machine's GUID, as Get-VM -Id takes it; sent as Id.ToString();
//   - State: the power state the page's example filters on
//     ($_.State -eq 'Running'); sent as State.ToString(), the state's name
//     (ConvertTo-Json would otherwise write the enumeration's number);
//   - Disks: the Path of each drive Get-VMHardDiskDrive returns
//     (https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vmharddiskdrive;
//     the same path Add-VMHardDiskDrive -Path took).
type vmInfo struct {
	Name  string   `json:"Name"`
	ID    string   `json:"Id"`
	State string   `json:"State"`
	Disks []string `json:"Disks"`
}

// run sends op's fixed script with p in the environment and decodes its
// answer. what names the driver operation for errors; timeout bounds the
// process (0 = the driver's timeout).
func (d *Driver) run(ctx context.Context, what, op string, p params, timeout time.Duration) (*result, error) {
	text, err := script(op)
	if err != nil {
		return nil, classified(what, driver.KindInvalid, err)
	}
	pj, err := json.Marshal(p)
	if err != nil {
		return nil, classified(what, driver.KindInvalid, err)
	}
	if timeout <= 0 {
		timeout = d.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append(append([]string(nil), Args...), encodeCommand(text))
	c := exec.CommandContext(ctx, d.powershell, args...)
	c.Env = environ(string(pj))
	c.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := c.Run()
	d.log.Debug("powershell", "op", op, "for", what, "elapsed", time.Since(start), "err", runErr)
	if ctx.Err() == context.DeadlineExceeded {
		return nil, classified(what, driver.KindTimeout, fmt.Errorf("%s: powershell did not finish within %s: %w", op, timeout, context.DeadlineExceeded))
	}
	if err := context.Cause(ctx); err != nil && runErr != nil {
		return nil, classified(what, driver.KindUnknown, fmt.Errorf("%s: %w", op, err))
	}
	var ee *exec.ExitError
	if runErr != nil && !errors.As(runErr, &ee) {
		return nil, classified(what, driver.KindInvalid, fmt.Errorf("%s: running %s: %w", op, d.powershell, runErr))
	}
	line, ok := lastResult(stdout.Bytes())
	if !ok {
		return nil, classified(what, driver.KindUnknown, fmt.Errorf("%s: %w: no result line (exit %v): %s", op, ErrScript, runErr, tail(stderr.String(), stdout.String())))
	}
	var r result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return nil, classified(what, driver.KindUnknown, fmt.Errorf("%s: %w: bad result %q: %w", op, ErrScript, tail(line), err))
	}
	if r.Error != nil {
		return nil, classified(what, r.Error.kind(), fmt.Errorf("%s: %w", op, r.Error))
	}
	if runErr != nil {
		return nil, classified(what, driver.KindUnknown, fmt.Errorf("%s: %w: %w: %s", op, ErrScript, runErr, tail(stderr.String())))
	}
	return &r, nil
}

// environ is this process's environment with ParamsEnv set to pj (any
// inherited value dropped).
func environ(pj string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(strings.ToUpper(kv), ParamsEnv+"=") {
			env = append(env, kv)
		}
	}
	return append(env, ParamsEnv+"="+pj)
}

func lastResult(out []byte) (string, bool) {
	var line string
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if s, ok := strings.CutPrefix(strings.TrimRight(sc.Text(), "\r"), resultPrefix); ok {
			line, found = s, true
		}
	}
	return line, found
}

func tail(parts ...string) string {
	s := strings.TrimSpace(strings.Join(parts, "\n"))
	if len(s) > 400 {
		s = "…" + s[len(s)-400:]
	}
	return s
}
