package api

import "time"

// A Drill proves that a machine's newest point boots: on its schedule the
// controller test-fails the point over through the target's driver, waits
// until the guest is up, runs the probe against the booted guest, and
// cleans up, always. A point that passed is verified (docs/drills.md).
type Drill struct {
	Name    string `json:"name"`
	Machine string `json:"machine,omitempty"`
	// Plan drills every machine of a recovery plan (not yet: refused).
	Plan string `json:"plan,omitempty"`
	// Every is the interval between scheduled runs.
	Every Duration `json:"every"`
	// Probe runs on the recovery host's agent (the controller for an exec
	// target) once the guest is up; exit 0 passes. "" passes once up.
	Probe string `json:"probe,omitempty"`
	// Timeout bounds the whole drill; the cleanup runs after it anyway.
	Timeout Duration `json:"timeout"`
	// Target is the target to drill on ("" = the machine's).
	Target string `json:"target,omitempty"`
	// UpMarker is the text on the serial console that says the guest is
	// up (drivers with a console); Port, when set, is a TCP port of the
	// guest's address that must accept a connection instead.
	UpMarker string `json:"up_marker,omitempty"`
	Port     int    `json:"port,omitempty"`
	// Paused drills run only when asked (ferry drills run).
	Paused  bool      `json:"paused,omitempty"`
	Created time.Time `json:"created"`
	// Filled in by the controller.
	LastRun *DrillRun  `json:"last_run,omitempty"`
	NextRun *time.Time `json:"next_run,omitempty"`
	Running bool       `json:"running,omitempty"`
}

// Drill defaults.
const (
	DefaultDrillTimeout  = 10 * time.Minute
	DefaultDrillUpMarker = "login:"
)

// Drill run results.
const (
	DrillRunning   = "running"
	DrillPassed    = "passed"
	DrillFailed    = "failed"
	DrillCancelled = "cancelled"
)

// DrillRun is one run of a drill and its report.
type DrillRun struct {
	ID      int64      `json:"id"`
	Drill   string     `json:"drill"`
	Machine string     `json:"machine"`
	Point   int64      `json:"point"`
	Started time.Time  `json:"started"`
	Ended   *time.Time `json:"ended,omitempty"`
	Result  string     `json:"result"`
	Error   string     `json:"error,omitempty"`
	// Phases are the drill's phases in order with their times.
	Phases []DrillPhase `json:"phases"`
	// ConsoleTail is the end of the guest's serial console (bounded).
	ConsoleTail string `json:"console_tail,omitempty"`
	ProbeOutput string `json:"probe_output,omitempty"`
	// Jobs are the test failover and cleanup jobs the drill ran.
	Jobs []string `json:"jobs,omitempty"`
}

// DrillPhase is one phase of a run: test-failover, wait-up, probe, cleanup.
type DrillPhase struct {
	Name    string    `json:"name"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Result  string    `json:"result"` // ok, failed, skipped
	Detail  string    `json:"detail,omitempty"`
}

// DrillDetail is `ferry drills show`: the drill and its recent runs.
type DrillDetail struct {
	Drill Drill      `json:"drill"`
	Runs  []DrillRun `json:"runs"`
}
