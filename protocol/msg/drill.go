package msg

import "time"

// Drill messages (docs/drills.md): the controller drives a boot drill's
// wait and probe through the recovery host's agent, which sees the booted
// test machine (its console log, its isolated test network).
const (
	// MethodDrillConsole returns the tail of a test machine's serial
	// console log (the file the driver writes in the set directory) and
	// whether a marker appears in it.
	MethodDrillConsole = "drill.console"
	// MethodDrillProbe runs a drill's probe command, or checks that a TCP
	// port of the guest accepts a connection, on the recovery host.
	MethodDrillProbe = "drill.probe"
)

// ConsoleLogName is the serial console log a hypervisor driver writes for
// a test machine, in the directory of its disk set.
const ConsoleLogName = "console.log"

// DrillConsoleTail bounds the console tail an agent returns.
const DrillConsoleTail = 8 << 10

// DrillConsoleRequest names the test machine's disk set and the marker.
type DrillConsoleRequest struct {
	Ref    TargetRef `json:"ref"`
	Marker string    `json:"marker,omitempty"`
}

// DrillConsoleResponse is the console's tail; Exists is false before the
// driver created the log (or when the driver writes none).
type DrillConsoleResponse struct {
	Exists bool   `json:"exists"`
	Found  bool   `json:"found"`
	Tail   string `json:"tail"`
	Path   string `json:"path"`
}

// DrillProbeRequest is a probe: Command through the platform's shell with
// Env added (FERRY_CONSOLE is set to the console log when Ref names a
// set), or, with Addr and Port, a TCP connect to the guest.
type DrillProbeRequest struct {
	Ref     *TargetRef        `json:"ref,omitempty"`
	Command string            `json:"command,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Timeout time.Duration     `json:"timeout"`
	Addr    string            `json:"addr,omitempty"`
	Port    int               `json:"port,omitempty"`
}

// DrillProbeResponse is the command's combined output (its tail) and exit
// code (-1 when it did not run to an exit).
type DrillProbeResponse struct {
	Output   string `json:"output"`
	ExitCode int    `json:"exit_code"`
}
