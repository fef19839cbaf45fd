package api

import (
	"fmt"
	"time"
)

// Error is the body of every failed admin call, and what `--json` prints on
// stderr: {"code": …, "message": …}. Codes are those of protocol.Code.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Token is an enrolment token as listed (the secret is shown once, at creation).
type Token struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	Uses     int       `json:"uses"` // how many enrolments it allows in all
	Used     int       `json:"used"` // how many it has served
	Revoked  bool      `json:"revoked"`
	Token    string    `json:"token,omitempty"`    // the token itself, only in the create response
	Commands []string  `json:"commands,omitempty"` // install one-liners, when asked for
}

// CreateTokenRequest asks for a token.
type CreateTokenRequest struct {
	TTL            Duration `json:"ttl"`
	Uses           int      `json:"uses"`
	InstallCommand bool     `json:"install_command"`
	// Controller is the HOST:PORT agents should dial; empty = the controller's own idea.
	Controller string `json:"controller,omitempty"`
}

// Agent is an enrolled agent.
type Agent struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Address     string    `json:"address"`
	Version     string    `json:"version"`
	Platform    string    `json:"platform"`
	Hostname    string    `json:"hostname"`
	Enrolled    time.Time `json:"enrolled"`
	LastSeen    time.Time `json:"last_seen"`
	Connected   bool      `json:"connected"`
	Revoked     bool      `json:"revoked"`
	CertExpires time.Time `json:"cert_expires"`
	ClockSkewMS int64     `json:"clock_skew_ms"`
	// Allows is what the agent lets the controller run on its host, as it
	// said when it connected; nil when it is not connected (or too old to
	// say).
	Allows *AgentPermissions `json:"allows,omitempty"`
}

// AgentPermissions: an agent runs plan scripts and exec driver commands
// only when installed, enrolled or run with --allow-plan-scripts and
// --allow-exec-drivers.
type AgentPermissions struct {
	PlanScripts bool `json:"plan_scripts"`
	ExecDrivers bool `json:"exec_drivers"`
}

// InventoryItem is a disk or disk file an agent can protect.
type InventoryItem struct {
	Path        string   `json:"path"`
	Kind        string   `json:"kind"`   // "block" or "file"
	Format      string   `json:"format"` // raw, vhdx, vhd, vmdk, qcow2
	Size        int64    `json:"size"`   // virtual size as the guest sees it
	Mountpoints []string `json:"mountpoints,omitempty"`
	Note        string   `json:"note,omitempty"`
}

// Policy is a replication policy.
type Policy struct {
	Name         string   `json:"name"`
	RPEvery      Duration `json:"rp_every"`
	AppEvery     Duration `json:"app_every"`
	Retention    Duration `json:"retention"`
	RPOThreshold Duration `json:"rpo_threshold"`
	Bandwidth    int64    `json:"bandwidth"` // bytes per second; 0 = unlimited
	BlockSize    int      `json:"block_size"`
}

// DefaultPolicy holds CLI.md's defaults.
func DefaultPolicy(name string) Policy {
	return Policy{
		Name:         name,
		RPEvery:      Duration(30 * time.Second),
		AppEvery:     Duration(time.Hour),
		Retention:    Duration(24 * time.Hour),
		RPOThreshold: Duration(5 * time.Minute),
		BlockSize:    64 << 10,
	}
}

// PolicyUpdate changes the fields that are set.
type PolicyUpdate struct {
	RPEvery      *Duration `json:"rp_every,omitempty"`
	AppEvery     *Duration `json:"app_every,omitempty"`
	Retention    *Duration `json:"retention,omitempty"`
	RPOThreshold *Duration `json:"rpo_threshold,omitempty"`
	Bandwidth    *int64    `json:"bandwidth,omitempty"`
	BlockSize    *int      `json:"block_size,omitempty"`
}

// Apply sets the update's fields on p; unset fields keep their value.
func (u PolicyUpdate) Apply(p *Policy) {
	if u.RPEvery != nil {
		p.RPEvery = *u.RPEvery
	}
	if u.AppEvery != nil {
		p.AppEvery = *u.AppEvery
	}
	if u.Retention != nil {
		p.Retention = *u.Retention
	}
	if u.RPOThreshold != nil {
		p.RPOThreshold = *u.RPOThreshold
	}
	if u.Bandwidth != nil {
		p.Bandwidth = *u.Bandwidth
	}
	if u.BlockSize != nil {
		p.BlockSize = *u.BlockSize
	}
}

// Driver is an exec driver: commands run to power and pause a machine.
type Driver struct {
	Start  string `json:"start,omitempty"`
	Stop   string `json:"stop,omitempty"`
	Pause  string `json:"pause,omitempty"`
	Resume string `json:"resume,omitempty"`
	Status string `json:"status,omitempty"`
}

// DiskRef names one disk of a protected machine at the source.
type DiskRef struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Format is the format the agent found at protect (raw, qcow2, vhdx,
	// vmdk, vhd); the controller records it and the agent reads and
	// writes the disk so from then on, never from its magic. "" (a
	// machine protected before formats were recorded) detects it.
	Format string `json:"format,omitempty"`
}

// ProtectRequest is `ferry protect`.
type ProtectRequest struct {
	Machine      string    `json:"machine"`
	Agent        string    `json:"agent"`
	Disks        []DiskRef `json:"disks"`
	Policy       string    `json:"policy,omitempty"`
	Target       string    `json:"target,omitempty"`
	CPUs         int       `json:"cpus,omitempty"`
	Memory       int64     `json:"memory,omitempty"`
	NICs         []string  `json:"nics,omitempty"`
	Driver       Driver    `json:"driver"`
	PreSnapshot  string    `json:"pre_snapshot,omitempty"`
	PostSnapshot string    `json:"post_snapshot,omitempty"`
	Freeze       []string  `json:"freeze,omitempty"`
	// SourceDriver is the home site's hypervisor driver ("" or exec: the
	// commands in Driver; libvirt, vsphere or hyperv); SourceOptions its
	// options (HomeOptionKeys).
	SourceDriver  string            `json:"source_driver,omitempty"`
	SourceOptions map[string]string `json:"source_options,omitempty"`
	// Domain is the machine's name at the home site's hypervisor (default: the machine's).
	Domain string `json:"domain,omitempty"`
	// Firmware is bios ("") or uefi, for the target's driver.
	Firmware string `json:"firmware,omitempty"`
	// IPs re-address NICs at failover (--ip NIC=ADDR/PREFIX[,GATEWAY]).
	IPs []NICAddress `json:"ips,omitempty"`
	// BlockSize is fixed when protection starts, from the policy; the
	// controller sets it.
	BlockSize int `json:"block_size,omitempty"`
}

// NICAddress is the address a NIC gets at the recovery site (re-IP).
type NICAddress struct {
	NIC     string `json:"nic"`     // the source network name, as given to --nic
	Address string `json:"address"` // ADDR/PREFIX
	Gateway string `json:"gateway,omitempty"`
}

// MachineDisk is one disk as `machines show` prints it.
type MachineDisk struct {
	Name       string `json:"name"`
	SourcePath string `json:"source_path"`
	TargetPath string `json:"target_path"`
	Size       int64  `json:"size"`
	Format     string `json:"format,omitempty"`
	// SourceFormat is the source disk's format recorded at protect ("":
	// not recorded, detected at each read).
	SourceFormat string `json:"source_format,omitempty"`
}

// Machine is a protected machine and its replication health.
type Machine struct {
	Name         string     `json:"name"`
	Agent        string     `json:"agent"`
	State        string     `json:"state"`
	Health       string     `json:"health"` // healthy, warning, degraded, critical
	HealthReason string     `json:"health_reason,omitempty"`
	RPOSeconds   *float64   `json:"rpo_seconds"` // null before the first point
	LastPoint    *time.Time `json:"last_point"`
	// LastPointMethod is how the newest point's view was made, and
	// LastPointReason, for an inconsistent newest point, why it is
	// inconsistent (docs/replication.md §5.2, "How the point was made").
	LastPointMethod string        `json:"last_point_method,omitempty"`
	LastPointReason string        `json:"last_point_reason,omitempty"`
	ActiveSite      string        `json:"active_site"` // home or recovery
	Direction       string        `json:"direction"`   // forward or reverse
	Policy          string        `json:"policy"`
	Target          string        `json:"target,omitempty"`
	AllowedActions  []string      `json:"allowed_actions"`
	Reasons         []string      `json:"reasons,omitempty"` // why other actions are not allowed, and warnings
	Disks           []MachineDisk `json:"disks"`
	CPUs            int           `json:"cpus,omitempty"`
	Memory          int64         `json:"memory,omitempty"`
	NICs            []string      `json:"nics,omitempty"`
	Driver          Driver        `json:"driver"`
	PreSnapshot     string        `json:"pre_snapshot,omitempty"`
	PostSnapshot    string        `json:"post_snapshot,omitempty"`
	Freeze          []string      `json:"freeze,omitempty"`
	Replication     Replication   `json:"replication"`
	// Progress is the running cycle's (or, once it ended, the last one's)
	// live progress; absent before the agent reported one.
	Progress *ReplicationProgress `json:"progress,omitempty"`
	Job      string               `json:"job,omitempty"` // the running mutating job, if any
	// Fence is the recovery site's stop an unplanned failback owes or
	// made (docs/failover.md "Unplanned failback and fencing").
	Fence *Fence `json:"fence,omitempty"`
	// Audit: when each retained point was last audited (re-read whole),
	// what was found, and the audit pass's progress (docs/audit.md).
	Audit *MachineAudit `json:"audit,omitempty"`
	// VerifiedSeconds is the age of the newest point a drill verified
	// (null when none is): the proven RPO beside the RPO.
	VerifiedSeconds *float64 `json:"verified_seconds"`
	VerifiedPoint   int64    `json:"verified_point,omitempty"`
}

// Fence is the stop of the recovery site's copy of a machine that an
// unplanned failback could not reach: pending until that site's agent
// reconnects, then done (the machine there stopped, its disks kept as the
// point recovery-divergent-<job>).
type Fence struct {
	State     string     `json:"state"` // pending or done
	Job       string     `json:"job"`
	Target    string     `json:"target"`
	StoppedAt *time.Time `json:"stopped_at,omitempty"`
	Point     int64      `json:"point,omitempty"`
	Error     string     `json:"error,omitempty"` // the last attempt's, while pending
	Note      string     `json:"note"`
}

// Replication is what the source agent last reported for a machine.
type Replication struct {
	Phase      string    `json:"phase,omitempty"` // idle, syncing, shipping, resync, paused, error
	LastError  string    `json:"last_error,omitempty"`
	LastCycle  time.Time `json:"last_cycle,omitempty"`
	BytesSent  int64     `json:"bytes_sent"`
	BlocksSent int64     `json:"blocks_sent"`
	Progress   float64   `json:"progress"` // of the current cycle, 0–1
}

// Progress phases: a cycle ships or resyncs, then is idle (ended) or
// failed (error, retried by the agent).
const (
	PhaseShipping = "shipping"
	PhaseResync   = "resync"
	PhaseIdle     = "idle"
	PhaseError    = "error"
)

// ReplicationProgress is a source agent's live account of a machine's
// cycle, reported about once a second while it runs: the bytes of the
// candidate blocks (those change detection found, or every allocated
// block for an initial sync) compared so far and in all. Within a cycle
// bytes_done only rises, and reaches bytes_total when the cycle ends.
type ReplicationProgress struct {
	Phase      string    `json:"phase"` // shipping, resync, idle (the cycle ended), error
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	RateBPS    int64     `json:"rate_bps"` // recent rate; the cycle's average once idle
	Started    time.Time `json:"started"`  // controller clock
	Updated    time.Time `json:"updated"`  // the last report
	// ETASeconds is the time left at the recent rate, while it runs.
	ETASeconds *float64 `json:"eta_seconds,omitempty"`
}

// Active reports whether the cycle is still running.
func (p *ReplicationProgress) Active() bool {
	return p != nil && (p.Phase == PhaseShipping || p.Phase == PhaseResync)
}

// Point is a recovery point as `points list` prints it.
type Point struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	Consistency string    `json:"consistency"`
	Bytes       int64     `json:"bytes"`
	Name        string    `json:"name"` // "" when unnamed; always present
	Changed     int64     `json:"changed_blocks"`
	// Damaged: the point reads data found damaged (ferry verify); it is
	// left out of latest* until the next cycles have stored it again.
	Damaged bool `json:"damaged,omitempty"`
	// Verified: a drill booted this point and its probe passed.
	Verified bool `json:"verified,omitempty"`
	// Method says how the agent made the point's view (reflink,
	// tracked-freeze, direct-read, powered-off, …) and Reason what it
	// noted: for an inconsistent point, why it is inconsistent. Both ""
	// for a point made before they were recorded; always present.
	Method string `json:"method"`
	Reason string `json:"reason"`
}

// LabelRequest names a point.
type LabelRequest struct {
	Point string `json:"point"`
	Name  string `json:"name"`
}

// ExportDisk describes one disk of an export stream.
type ExportDisk struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// ExportManifest answers "which disks, how big" before the data is fetched.
type ExportManifest struct {
	Point Point        `json:"point"`
	Disks []ExportDisk `json:"disks"`
}

// Error codes of the admin API (the same words as protocol.Code).
const (
	CodeInvalid            = "invalid"
	CodeNotFound           = "not_found"
	CodeUnauthorized       = "unauthorized"
	CodeConflict           = "conflict"
	CodeExists             = "exists"
	CodeUnavailable        = "unavailable"
	CodeFailedPrecondition = "failed_precondition"
	CodeInternal           = "internal"
	CodeBusy               = "busy"
)

// Errorf makes an *Error with a code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ExportRequest fetches a point's manifest or a disk's data.
type ExportRequest struct {
	Point string `json:"point"`
	Key   []byte `json:"key,omitempty"` // private key file content, for an encrypted repository
}

// VerifyRequest asks for a verification of one machine or all.
type VerifyRequest struct {
	Machine string `json:"machine,omitempty"`
}

// VerifyReport is what `ferry verify` prints.
type VerifyReport struct {
	Chunks  int64          `json:"chunks"`
	Bytes   int64          `json:"bytes"`
	Damaged []DamagedChunk `json:"damaged"`
}

// DamagedChunk names a chunk that failed verification and what it affects.
type DamagedChunk struct {
	Hash     string          `json:"hash"`
	Pack     string          `json:"pack"`
	Error    string          `json:"error"`
	Affected []AffectedBlock `json:"affected"`
}

// AffectedBlock is a point and disk a damaged chunk belongs to.
type AffectedBlock struct {
	Machine string  `json:"machine"`
	PointID int64   `json:"point_id"`
	Disk    string  `json:"disk"`
	Blocks  []int64 `json:"blocks"`
}

// GCReport is what `ferry gc` prints.
type GCReport struct {
	ChunksDeleted int64 `json:"chunks_deleted"`
	PacksDeleted  int64 `json:"packs_deleted"`
	PacksRepacked int64 `json:"packs_repacked"`
	BytesFreed    int64 `json:"bytes_freed"`
	ChunksRecoded int64 `json:"chunks_recoded"` // S2 chunks re-encoded to zstd
	BytesRecoded  int64 `json:"bytes_recoded"`  // their records before
	RecodeSaved   int64 `json:"recode_saved"`   // how much smaller the new records are
}

// UpgradeRequest is `ferry agents upgrade AGENT|--all`.
type UpgradeRequest struct {
	Agent string `json:"agent,omitempty"`
	All   bool   `json:"all,omitempty"`
}

// UpgradeResult is one agent's outcome.
type UpgradeResult struct {
	Agent       string `json:"agent"`
	FromVersion string `json:"from_version"`
	ToVersion   string `json:"to_version"`
	State       string `json:"state"` // upgraded, current, failed, rolled-back
	Error       string `json:"error,omitempty"`
}

// Target is a recovery site: an agent, a directory and a driver.
type Target struct {
	Name   string `json:"name"`
	Agent  string `json:"agent"`
	Dir    string `json:"dir"`
	Driver string `json:"driver"` // exec (default), libvirt, vsphere, hyperv
	Format string `json:"format"` // raw (default), qcow2, vhdx, vmdk
	Exec   Driver `json:"exec"`   // the exec driver's commands
	// Options are a hypervisor driver's options (see TargetOptionKeys).
	Options map[string]string `json:"options,omitempty"`
	// Networks maps a machine's source network (protect --nic) to the
	// network its NIC joins here (targets add --network SRC=DST).
	Networks map[string]string `json:"networks,omitempty"`
	// TestNetwork is the isolated network test failovers join ("" = none).
	TestNetwork string `json:"test_network,omitempty"`
	// NewMACs gives failed-over NICs new MAC addresses.
	NewMACs bool `json:"new_macs,omitempty"`
	// Connected is filled in when listed.
	Connected bool `json:"connected"`
}

// FailoverRequest is `ferry failover` (and its --test and --planned forms).
type FailoverRequest struct {
	Machine           string `json:"machine,omitempty"`
	Plan              string `json:"plan,omitempty"`
	Target            string `json:"target,omitempty"`
	Point             string `json:"point,omitempty"`
	Test              bool   `json:"test,omitempty"`
	Planned           bool   `json:"planned,omitempty"`
	ShutdownSource    bool   `json:"shutdown_source,omitempty"`
	Direction         string `json:"direction,omitempty"`
	Key               []byte `json:"key,omitempty"` // private key file content (encrypted repositories)
	AllowInconsistent bool   `json:"allow_inconsistent,omitempty"`
	// AllowDamaged accepts a point that reads data found damaged.
	AllowDamaged bool     `json:"allow_damaged,omitempty"`
	DryRun       bool     `json:"dry_run,omitempty"`
	Timeout      Duration `json:"timeout,omitempty"`
}

// MachineActionRequest is commit, cleanup, change-point, reprotect, failback.
type MachineActionRequest struct {
	Machine string `json:"machine,omitempty"`
	Plan    string `json:"plan,omitempty"`
	Point   string `json:"point,omitempty"` // change-point; failback (unplanned)
	Key     []byte `json:"key,omitempty"`
	// AllowDamaged accepts a point that reads data found damaged
	// (change-point, unplanned failback).
	AllowDamaged bool `json:"allow_damaged,omitempty"`
	// reprotect: another target (not built yet), and how the other side's
	// machine is known to be off: stopped through its driver, or declared.
	Target      string `json:"target,omitempty"`
	StopSource  bool   `json:"stop_source,omitempty"`
	SourceIsOff bool   `json:"source_is_off,omitempty"`
	TestDir     string `json:"test_dir,omitempty"`
	// failback: unplanned (to Point, or the newest point), or a test.
	Unplanned bool `json:"unplanned,omitempty"`
	Test      bool `json:"test,omitempty"`
}

// Job states and step states (CLI.md).
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobWaiting   = "waiting"
	JobSucceeded = "succeeded"
	JobPartial   = "partial"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
	// JobDryRun is the state of a dry run's answer: its checks passed. A
	// dry run is never recorded as a job.
	JobDryRun = "dry-run"

	StepPending   = "pending"
	StepRunning   = "running"
	StepSucceeded = "succeeded"
	StepFailed    = "failed"
	StepSkipped   = "skipped"
)

// JobStep is one step of a job.
type JobStep struct {
	Name       string    `json:"name"`
	State      string    `json:"state"`
	Progress   float64   `json:"progress"`
	BytesDone  int64     `json:"bytes_done,omitempty"`
	BytesTotal int64     `json:"bytes_total,omitempty"`
	Error      string    `json:"error,omitempty"`
	Note       string    `json:"note,omitempty"`
	Started    time.Time `json:"started,omitempty"`
	Ended      time.Time `json:"ended,omitempty"`
}

// JobMachine is one machine's outcome in a job.
type JobMachine struct {
	Name    string   `json:"name"`
	State   string   `json:"state"`
	PointID int64    `json:"point_id"`
	Error   string   `json:"error,omitempty"`
	Notes   []string `json:"notes,omitempty"`
	// Group is the machine's recovery plan group (plan jobs only).
	Group int `json:"group,omitempty"`
	// Steps are the machine's own steps with their times (plan jobs,
	// whose machines of a group move in parallel): they show the order
	// of the groups and the overlap inside one.
	Steps []JobStep `json:"steps,omitempty"`
}

// JobAction is a recovery plan action as a job ran it: a script's exit
// code and output (its tail), or a manual action's text.
type JobAction struct {
	Group    int       `json:"group"`
	Phase    string    `json:"phase"` // pre | post
	Index    int       `json:"index"` // its place among the group's phase actions, from 0
	Script   string    `json:"script,omitempty"`
	On       string    `json:"on,omitempty"` // the agent; empty: the controller
	Manual   string    `json:"manual,omitempty"`
	State    string    `json:"state"` // a step state; a manual action waits as running
	ExitCode int       `json:"exit_code,omitempty"`
	Output   string    `json:"output,omitempty"`
	Error    string    `json:"error,omitempty"`
	Undone   bool      `json:"undone,omitempty"` // its undo script ran (a rollback)
	Started  time.Time `json:"started,omitempty"`
	Ended    time.Time `json:"ended,omitempty"`
}

// JobWait is what a job in state waiting waits for: a manual action,
// until `ferry jobs resume`.
type JobWait struct {
	Step  string    `json:"step"`
	Text  string    `json:"text"`
	Since time.Time `json:"since"`
}

// Job is a long-running operation (failover, commit, …).
type Job struct {
	ID        string       `json:"id"`
	Kind      string       `json:"kind"`
	State     string       `json:"state"`
	Steps     []JobStep    `json:"steps"`
	Machines  []JobMachine `json:"machines"`
	Error     string       `json:"error,omitempty"`
	Notes     []string     `json:"notes,omitempty"`
	Created   time.Time    `json:"created"`
	Updated   time.Time    `json:"updated"`
	CancelReq bool         `json:"cancel_requested,omitempty"`
	// Plan is the recovery plan the job runs, if any; Actions its
	// actions as they ran; Waiting the manual action it waits on.
	Plan    string      `json:"plan,omitempty"`
	Actions []JobAction `json:"actions,omitempty"`
	Waiting *JobWait    `json:"waiting,omitempty"`
	// Checks is a plan dry run's answer, member by member in group order.
	Checks []MachineCheck `json:"checks,omitempty"`
}

// Terminal reports whether a job state is final.
func Terminal(state string) bool {
	switch state {
	case JobSucceeded, JobPartial, JobFailed, JobCancelled:
		return true
	}
	return false
}

// FailoverInfo is what a machine remembers of its current failover.
type FailoverInfo struct {
	Job      string `json:"job"`
	Target   string `json:"target"`
	PointID  int64  `json:"point_id"`
	Set      string `json:"set"` // "live" or "test-<job>"
	TestName string `json:"test_name,omitempty"`
}

// UpdateMachineRequest changes a protected machine (`ferry machines
// update`). A nil field is left as it is; the disks named in RemoveDisks
// are dropped and AddDisks are added (each synced alone, the others keep
// their block maps).
type UpdateMachineRequest struct {
	// Rename is the machine's new name ("" keeps it).
	Rename string  `json:"rename,omitempty"`
	Policy *string `json:"policy,omitempty"`
	// Target is the new default failover target ("" clears it).
	Target *string `json:"target,omitempty"`
	// Driver fields replace the source driver's commands one by one.
	Start  *string `json:"start,omitempty"`
	Stop   *string `json:"stop,omitempty"`
	Pause  *string `json:"pause,omitempty"`
	Resume *string `json:"resume,omitempty"`
	Status *string `json:"status,omitempty"`
	// SourceDriver is exec (""), libvirt, vsphere or hyperv; SourceOptions
	// are merged into the machine's (a "" value removes an option).
	SourceDriver  *string           `json:"source_driver,omitempty"`
	SourceOptions map[string]string `json:"source_options,omitempty"`
	Domain        *string           `json:"domain,omitempty"`
	PreSnapshot   *string           `json:"pre_snapshot,omitempty"`
	PostSnapshot  *string           `json:"post_snapshot,omitempty"`
	Freeze        *[]string         `json:"freeze,omitempty"`
	AddDisks      []DiskRef         `json:"add_disks,omitempty"`
	RemoveDisks   []string          `json:"remove_disks,omitempty"`
	// Force allows a change that deletes the machine's stored points (a
	// block-size change: the repository keeps a disk in one block size).
	Force bool `json:"force,omitempty"`
}

// UpdateMachineResult is the machine after an update, with what the
// update will cost (Notes: a disk synced alone, a target staged in full, a
// resync) in the words `machines update` prints.
type UpdateMachineResult struct {
	Machine Machine  `json:"machine"`
	Notes   []string `json:"notes"`
}

// CommitPreview is what `ferry commit M` would delete: the recovery
// points it removes and the ones it keeps (and why).
type CommitPreview struct {
	Machine string  `json:"machine"`
	Deleted []Point `json:"deleted"`
	Kept    []Point `json:"kept"`
}

// PointDamage is what the point audit found damaged in one disk of a point.
type PointDamage struct {
	Disk   string  `json:"disk"`
	Blocks []int64 `json:"blocks"`
	Error  string  `json:"error"`
}

// PointAudit is when the point audit last re-read a point whole, and what
// it found.
type PointAudit struct {
	PointID   int64         `json:"point_id"`
	AuditedAt *time.Time    `json:"audited_at"` // nil: not audited yet
	Damaged   bool          `json:"damaged"`    // the point reads data marked damaged now
	Damage    []PointDamage `json:"damage"`     // what the last pass found (empty when clean)
}

// AuditPass is the point audit's progress: the running pass (if any) and
// the last finished one.
type AuditPass struct {
	Running     bool       `json:"running"`
	Machine     string     `json:"machine,omitempty"` // "" = every machine
	Started     *time.Time `json:"started,omitempty"`
	Chunks      int64      `json:"chunks"`       // read so far (or in the last pass)
	ChunksTotal int64      `json:"chunks_total"` // to read in this pass
	Bytes       int64      `json:"bytes"`
	RateLimit   int64      `json:"rate_limit"` // bytes/s; 0 = unlimited
	// BackgroundOff: the controller's --audit-rate is 0; only `ferry
	// points audit` runs passes.
	BackgroundOff bool       `json:"background_off,omitempty"`
	LastStarted   *time.Time `json:"last_started,omitempty"`
	LastEnded     *time.Time `json:"last_ended,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
}

// MachineAudit is the point audit as `machines show` prints it.
type MachineAudit struct {
	Pass   AuditPass    `json:"pass"`
	Points []PointAudit `json:"points"`
}

// AuditRequest runs one point-audit pass now (`ferry points audit`).
type AuditRequest struct {
	Machine string `json:"machine,omitempty"`
	Rate    int64  `json:"rate,omitempty"` // bytes/s; 0 = the controller's setting
}

// AuditReport is what one point-audit pass read and found.
type AuditReport struct {
	Chunks  int64          `json:"chunks"`
	Bytes   int64          `json:"bytes"`
	Seconds float64        `json:"seconds"`
	Points  int            `json:"points"` // points audited
	Damaged []DamagedChunk `json:"damaged"`
}
