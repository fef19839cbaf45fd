package msg

import (
	"strings"
	"time"
)

// Methods the controller serves (agent → controller).
const (
	MethodEnrol      = "enrol"          // on an enrol stream, without a client certificate
	MethodHello      = "hello"          // first call of every session
	MethodRenew      = "cert.renew"     // a new certificate for the same agent
	MethodCycleBegin = "cycle.begin"    // open (or resume) the pending point of a machine
	MethodCycleEnd   = "cycle.end"      // the cycle is complete: make it a point
	MethodReport     = "machine.report" // replication progress and errors
)

// Methods the agent serves (controller → agent, over the agent's session).
const (
	MethodConfig    = "config.set"  // the whole desired protection state of this agent
	MethodTime      = "time"        // the agent's clock, for offset measurement
	MethodInventory = "inventory"   // protectable disks and disk files
	MethodCycleNow  = "cycle.now"   // run a cycle now and return its point
	MethodDriver    = "driver.run"  // run a source-driver command
	MethodCheck     = "disks.check" // can these paths be read as disks? (protect-time check)
)

// EnrolRequest turns a token into a client certificate.
type EnrolRequest struct {
	Token    string `json:"token"`
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	Platform string `json:"platform"` // GOOS/GOARCH
	Version  string `json:"version"`
	// PublicKey is the agent's public key, PKIX DER. The agent keeps the
	// private key; the controller signs a certificate for it.
	PublicKey []byte `json:"public_key"`
}

// EnrolResponse carries the agent's identity and certificates (PEM).
type EnrolResponse struct {
	AgentID string `json:"agent_id"`
	Name    string `json:"name"`
	Cert    []byte `json:"cert"`
	CA      []byte `json:"ca"`
}

// HelloRequest opens an agent session's conversation.
type HelloRequest struct {
	Version  string `json:"version"`
	Platform string `json:"platform"`
	Hostname string `json:"hostname"`
	// RepositoryKey is the fingerprint of the repository private key the
	// agent holds ("" when none): informative; the controller asks again
	// (TargetStatusResponse) before each move.
	RepositoryKey string `json:"repository_key,omitempty"`
	// Permissions is what this agent's owner lets the controller run on its
	// host (--allow-plan-scripts, --allow-exec-drivers). Nil from an agent
	// older than the field, which refuses nothing.
	Permissions *Permissions `json:"permissions,omitempty"`
}

// Permissions are the commands an agent runs for the controller; an agent
// refuses the others with CodeFailedPrecondition naming the flag.
type Permissions struct {
	PlanScripts bool `json:"plan_scripts"` // MethodPlanScript
	ExecDrivers bool `json:"exec_drivers"` // exec source and target driver commands
}

// HelloResponse tells the agent who the controller thinks it is.
type HelloResponse struct {
	AgentID    string `json:"agent_id"`
	Name       string `json:"name"`
	ServerTime int64  `json:"server_time"` // unix ns
}

// RenewRequest asks for a fresh certificate for the same key (or a new one).
type RenewRequest struct {
	PublicKey []byte `json:"public_key"`
}

// RenewResponse carries the new certificate (PEM).
type RenewResponse struct {
	Cert []byte `json:"cert"`
}

// Driver is an exec driver's commands.
type Driver struct {
	Start  string `json:"start,omitempty"`
	Stop   string `json:"stop,omitempty"`
	Pause  string `json:"pause,omitempty"`
	Resume string `json:"resume,omitempty"`
	Status string `json:"status,omitempty"`
}

// DiskConfig is one disk the agent replicates.
type DiskConfig struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	BlockSize int    `json:"block_size"`
	// Format, when set (raw, qcow2, vhdx, vmdk), is the file's format:
	// the agent reads it so and never from the file's magic. Set where
	// the guest owns the file's first bytes (a raw disk Ferry wrote at a
	// recovery site) or Ferry wrote the container; "" detects it.
	Format string `json:"format,omitempty"`
}

// MachineConfig is what an agent needs to replicate one machine.
type MachineConfig struct {
	Name         string        `json:"name"`
	Disks        []DiskConfig  `json:"disks"`
	RPEvery      time.Duration `json:"rp_every"`
	AppEvery     time.Duration `json:"app_every"`
	Bandwidth    int64         `json:"bandwidth"` // bytes/s, 0 = unlimited
	Driver       Driver        `json:"driver"`
	PreSnapshot  string        `json:"pre_snapshot,omitempty"`
	PostSnapshot string        `json:"post_snapshot,omitempty"`
	Freeze       []string      `json:"freeze,omitempty"`
	// Paused stops cycles (failover in progress) without forgetting state.
	Paused bool `json:"paused,omitempty"`
	// Env is extra context for driver and snapshot commands (FERRY_MACHINE …).
	Env map[string]string `json:"env,omitempty"`
	// NewDisksAlone: the controller understands DiskInfo.NewMap, so a disk
	// the agent has no block map of yet is synced alone. An older
	// controller leaves it false and the agent counts such a map as
	// disagreeing with the others (a hash resync of every disk).
	NewDisksAlone bool `json:"new_disks_alone,omitempty"`
}

// ConfigRequest replaces the agent's whole protection state.
type ConfigRequest struct {
	Machines []MachineConfig `json:"machines"`
}

// DiskInfo describes a disk's view in one cycle.
type DiskInfo struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	// NewMap: the agent has no block map of this disk yet (a disk added
	// to the machine) and assumes the controller holds none of it (zeros);
	// its map is left out of MapState. The controller orders a resync when
	// its repository does hold data of the disk.
	NewMap bool `json:"new_map,omitempty"`
}

// MapState is what the agent's block map believes the controller holds.
type MapState struct {
	HeadPoint int64 `json:"head_point"` // the newest point the map is known to match (0: none)
	Pending   int64 `json:"pending"`    // the pending point the map has acknowledged blocks of (0: none)
	Valid     bool  `json:"valid"`      // false: the map is missing or cannot be trusted
}

// CycleBeginRequest opens a cycle.
type CycleBeginRequest struct {
	Machine string     `json:"machine"`
	Disks   []DiskInfo `json:"disks"`
	Map     MapState   `json:"map"`
}

// CycleBeginResponse names the pending point the cycle writes into, and
// whether the agent must resync its map against the controller's hashes.
type CycleBeginResponse struct {
	Cycle        int64  `json:"cycle"` // the pending point's id; data frames carry it
	HeadPoint    int64  `json:"head_point"`
	Resync       bool   `json:"resync"`
	ResyncReason string `json:"resync_reason,omitempty"`
	// Patches says whether the controller can build blocks from sub-block
	// patches (false for an encrypted repository without its private key).
	Patches bool `json:"patches"`
	// Codecs lists the block codecs the controller accepts on the cycle's
	// data streams beyond none and zstd, which every controller accepts
	// (docs/protocol.md §6.3). A controller before it omits the field, and
	// the agent then sends none and zstd only.
	Codecs []string `json:"codecs,omitempty"`
}

// Block codecs a controller may offer in CycleBeginResponse.Codecs.
const (
	WireCodecS2 = "s2" // data.CodecS2
)

// CycleEndRequest declares a cycle complete.
type CycleEndRequest struct {
	Machine     string `json:"machine"`
	Cycle       int64  `json:"cycle"`
	Parts       uint32 `json:"parts"`   // manifest parts sent, over all data streams
	Entries     uint64 `json:"entries"` // manifest entries sent
	Instant     int64  `json:"instant"` // the view's instant, agent clock, unix ns
	Consistency string `json:"consistency"`
	// Note is Method and the view's notes in one line ("direct-read: …"),
	// what agents sent before Method and Reason; still sent, for older
	// controllers.
	Note string `json:"note,omitempty"`
	Name string `json:"name,omitempty"` // a name for the point (points Ferry keeps on its own account)
	// Method says how the view was made (reflink, tracked-freeze,
	// direct-read, powered-off, …) and Reason what the point's reader
	// should know of it: for an inconsistent point, why it could not be
	// made consistent. Both optional (docs/protocol.md §5.3): a controller
	// given only Note takes its first word as the method and the rest as
	// the reason (SplitNote).
	Method string `json:"method,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// ViewNote returns the request's method and reason: the explicit fields,
// or, from an agent that sends only Note, the note split by SplitNote.
func (r CycleEndRequest) ViewNote() (method, reason string) {
	if r.Method != "" {
		return r.Method, r.Reason
	}
	return SplitNote(r.Note)
}

// SplitNote splits an older agent's note, "METHOD" or "METHOD: notes",
// into its method (the first word) and the rest.
func SplitNote(note string) (method, rest string) {
	note = strings.TrimSpace(note)
	i := strings.IndexAny(note, ": \t")
	if i < 0 {
		return note, ""
	}
	return note[:i], strings.TrimSpace(strings.TrimLeft(note[i:], ": \t"))
}

// CycleEndResponse names the new point.
type CycleEndResponse struct {
	PointID int64 `json:"point_id"`
	Instant int64 `json:"instant"` // controller clock, unix ns
}

// ReportRequest carries replication progress and errors.
type ReportRequest struct {
	Machine    string  `json:"machine"`
	Phase      string  `json:"phase"` // idle, syncing, shipping, resync, paused, error
	Error      string  `json:"error,omitempty"`
	BytesSent  int64   `json:"bytes_sent"`
	BlocksSent int64   `json:"blocks_sent"`
	Progress   float64 `json:"progress"`
	// Live progress of the running cycle (docs/protocol.md §5.2; added to
	// v1, all optional): bytes of candidate blocks compared so far and in
	// all, the recent rate, and when the cycle's shipping or resync began
	// (Unix nanoseconds, agent clock). A final "idle" report carries the
	// cycle's totals with BytesDone = BytesTotal.
	BytesDone  int64 `json:"bytes_done,omitempty"`
	BytesTotal int64 `json:"bytes_total,omitempty"`
	RateBPS    int64 `json:"rate_bps,omitempty"`
	Started    int64 `json:"started,omitempty"`
}

// TimeResponse is the agent's clock.
type TimeResponse struct {
	UnixNano int64 `json:"unix_nano"`
}

// InventoryItem is a protectable disk or disk file.
type InventoryItem struct {
	Path        string   `json:"path"`
	Kind        string   `json:"kind"` // block or file
	Format      string   `json:"format"`
	Size        int64    `json:"size"`
	Mountpoints []string `json:"mountpoints,omitempty"`
	Note        string   `json:"note,omitempty"`
}

// InventoryResponse lists what the agent can protect.
type InventoryResponse struct {
	Items []InventoryItem `json:"items"`
}

// CheckRequest asks the agent whether it can read these paths as disks.
type CheckRequest struct {
	Paths []string `json:"paths"`
}

// CheckResponse describes each path, in order; Error is set for a path the
// agent cannot protect, saying why.
type CheckResponse struct {
	Disks []CheckedDisk `json:"disks"`
}

// CheckedDisk is one answer of CheckResponse.
type CheckedDisk struct {
	Path   string `json:"path"`
	Format string `json:"format,omitempty"`
	Size   int64  `json:"size,omitempty"`
	Error  string `json:"error,omitempty"`
}

// CycleNowRequest runs one cycle immediately.
type CycleNowRequest struct {
	Machine string `json:"machine"`
	App     bool   `json:"app"` // app-consistent
}

// CycleNowResponse names the point that cycle produced.
type CycleNowResponse struct {
	PointID int64 `json:"point_id"`
}

// DriverRequest runs one source-driver action on the agent.
type DriverRequest struct {
	Machine string            `json:"machine"`
	Action  string            `json:"action"` // start, stop, pause, resume, status
	Env     map[string]string `json:"env,omitempty"`
	Timeout time.Duration     `json:"timeout,omitempty"`
	// Hypervisor selects a source driver other than exec (protect
	// --driver libvirt …): the same drivers as targets, at the home site.
	Hypervisor
}

// DriverResponse reports the command's outcome.
type DriverResponse struct {
	Status string `json:"status,omitempty"` // for status: running, stopped, absent
	Output string `json:"output,omitempty"`
}

// HashesRequest opens a hashes stream (stream kind hashes): the first frame,
// type FrameHashesRequest, carries it as JSON. The controller answers with
// data.HashRun frames of the disk's newest state and a closing data.Barrier
// whose Seq is the number of runs.
type HashesRequest struct {
	Cycle int64  `json:"cycle"`
	Disk  uint16 `json:"disk"` // index in the cycle's disk list
	// Pending limits the answer to the blocks the pending point itself has
	// stored (its own rows), for a resumed cycle to recheck blocks whose
	// acknowledgement it may have missed. Additive: an older controller
	// ignores it and sends the whole disk, which is a superset.
	Pending bool `json:"pending,omitempty"`
	// Summary asks for the summary resync of protocol v2 (fingerprints
	// and group digests, docs/protocol.md §6.9) instead of HashRun frames.
	// An agent sets it only on a session that negotiated version 2 or
	// later; it is ignored with Pending.
	Summary bool `json:"summary,omitempty"`
}

// FrameHashesRequest is the frame type of a HashesRequest.
const FrameHashesRequest = 100
