package msg

import "strings"

// Recovery-site operations: the controller drives the agent of a target
// (a recovery-site host) to keep staged replicas, move disks between
// points, and run failed-over machines.
//
// Layout under a target's directory DIR, per machine M (all names are
// validated by the controller: letters, digits, '.', '_', '-'):
//
//	DIR/M/staged/<disk>.raw    staged replica (sparse raw), brought forward as points arrive
//	DIR/M/staged/state.json    which point the staged disks hold (see DiskSetState)
//	DIR/M/live/<disk>.raw      the failed-over machine's disks (after promote)
//	DIR/M/live/state.json
//	DIR/M/test-<job>/<disk>.raw  a test failover's clones
//	DIR/M/test-<job>/state.json
//
// Every disk set ("staged", "live", "test-<job>") has a state file written
// with the small-file durable path.

// Methods the agent serves for its targets.
const (
	MethodTargetStatus  = "target.status"  // what a machine's disk sets hold
	MethodTargetPromote = "target.promote" // staged → live (rename; idempotent)
	MethodTargetDemote  = "target.demote"  // live → staged (rollback; idempotent)
	MethodTargetClone   = "target.clone"   // staged → test-<job> (reflink where possible)
	MethodTargetRemove  = "target.remove"  // delete a disk set (a test, or a committed machine's staging)
	MethodTargetDriver  = "target.driver"  // run the target's hypervisor driver
	MethodTargetShip    = "target.ship"    // ship a disk set's content to the controller as a named point
	MethodTargetConvert = "target.convert" // write a disk set's disks in the format the target's hypervisor wants
)

// DiskSetState is a disk set's state.json: the disks hold point Point
// exactly, unless Moving is set — a move from Point to MovingTo was
// interrupted and the disks are somewhere between the two.
type DiskSetState struct {
	Point    int64        `json:"point"`               // 0 = all zeros (never written)
	MovingTo int64        `json:"moving_to,omitempty"` // set while a move is in flight
	Disks    []TargetDisk `json:"disks"`
	// Written is set once the machine ran on these disks (they may differ
	// from Point by the machine's own writes).
	Written bool `json:"written,omitempty"`
}

// TargetDisk is one disk of a disk set.
type TargetDisk struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	Path      string `json:"path,omitempty"` // filled in by the agent in answers
}

// TargetRef names a machine's directory on a target.
type TargetRef struct {
	Dir     string `json:"dir"`
	Machine string `json:"machine"`
	Set     string `json:"set"` // "staged", "live" or "test-<job>"
}

// TargetStatusRequest asks what a machine's disk sets hold.
type TargetStatusRequest struct {
	Dir     string `json:"dir"`
	Machine string `json:"machine"`
}

// TargetStatusResponse maps disk set names to their state; sets that do not
// exist are absent.
type TargetStatusResponse struct {
	Sets map[string]DiskSetState `json:"sets"`
	// BytesWritten counts the bytes this agent process wrote to disk sets
	// (its write path), so tests can check that a move rewrites only what
	// differs.
	BytesWritten int64 `json:"bytes_written"`
}

// TargetCloneRequest clones the staged set into a test set.
type TargetCloneRequest struct {
	Dir     string `json:"dir"`
	Machine string `json:"machine"`
	To      string `json:"to"` // "test-<job>"
}

// TargetCloneResponse says how the clone was made.
type TargetCloneResponse struct {
	Reflinked bool  `json:"reflinked"` // false: a full copy was made
	Bytes     int64 `json:"bytes"`     // bytes copied when not reflinked
}

// TargetDriverRequest runs a target driver action for a machine.
type TargetDriverRequest struct {
	Machine  string            `json:"machine"`  // the name the driver knows it by (a test's name for a test failover)
	Action   string            `json:"action"`   // start, stop, pause, resume, status
	Commands Driver            `json:"commands"` // the target's exec driver
	Env      map[string]string `json:"env"`      // FERRY_JOB, FERRY_KIND, FERRY_MACHINE, FERRY_TEST, FERRY_DISKS, …
	TimeoutS int               `json:"timeout_s,omitempty"`
	// Ref names the disk set the machine runs on. Before running "start"
	// the agent marks that set Written (durably), so a later move of it
	// needs Force. Without Ref, Env["FERRY_SET"] names the set, in the
	// directory Env["FERRY_DIR"] of machine Env["FERRY_MACHINE"] (else
	// Machine). A start that names no set marks nothing.
	Ref *TargetRef `json:"ref,omitempty"`
}

// TargetConvertRequest asks for a disk set's disks in Format ("qcow2",
// "vhdx" or "vmdk"): each <disk>.raw gets a sibling <disk>.<format>,
// written once and kept until the set next moves (a move deletes them, so
// a copy never names a point its set no longer holds). A copy that exists
// is not rewritten: a machine started on it may have written to it.
type TargetConvertRequest struct {
	Ref    TargetRef `json:"ref"`
	Format string    `json:"format"`
}

// FormatCopyPath is where target.convert keeps a disk's copy in format:
// the raw file's path with the format as its extension ("raw": the raw
// file itself).
func FormatCopyPath(rawPath, format string) string {
	if format == "" || format == "raw" {
		return rawPath
	}
	return strings.TrimSuffix(rawPath, ".raw") + "." + format
}

// TargetConvertResponse names the copies, in the set's disk order, and
// says how many bytes of the set were converted now (0 when every copy
// existed).
type TargetConvertResponse struct {
	Paths []string `json:"paths"`
	Bytes int64    `json:"bytes"`
}

// TargetShipRequest ships a disk set as a cycle of machine Machine into
// the controller (cycle.begin/end with the set's disks), as a point named
// Name. The agent compares every block with the controller's newest state
// (a hash resync), so only differing blocks travel.
type TargetShipRequest struct {
	Ref  TargetRef `json:"ref"`
	Name string    `json:"name"`
}

// TargetShipResponse names the point made.
type TargetShipResponse struct {
	PointID int64 `json:"point_id"`
}

// A restore stream (stream kind restore) is opened by the controller on
// the agent's session to move a disk set from one point to another:
//
//	controller → agent: frame FrameRestoreHeader (JSON RestoreHeader)
//	controller → agent: data.Batch frames (Cycle = Header.To) of blocks at
//	                    point To: whole blocks (codec none/zstd) or zero
//	                    markers (FlagZero; the agent writes zeros or punches
//	                    a hole). Disk = index into Header.Disks.
//	controller → agent: data.Barrier{Cycle: To, Seq: number of batches}
//	agent → controller: data.Ack{Cycle: To, Seq: number of batches} once
//	                    every block is written, the files are truncated to
//	                    their sizes and fsynced, and state.json says Point=To
//
// Before writing the first block the agent records MovingTo=To (durably),
// so an interrupted move is known; a move is idempotent: blocks carry
// absolute content. The agent answers an error frame on any failure.
const FrameRestoreHeader = 101

// RestoreHeader opens a restore stream.
type RestoreHeader struct {
	Ref   TargetRef    `json:"ref"`
	From  int64        `json:"from"` // the point the controller believes the set holds (checked against state.json unless Force)
	To    int64        `json:"to"`
	Disks []TargetDisk `json:"disks"`
	// Create makes the set if it does not exist (first staging).
	Create bool `json:"create,omitempty"`
	// Force skips the From check (the controller sends a superset of blocks
	// that covers any intermediate state, e.g. after an interrupted move).
	Force bool `json:"force,omitempty"`
	// Reset makes every disk all zeros (after MovingTo is recorded, before
	// the first block): the controller sends every non-zero block of To
	// and nothing else, for a set whose content it cannot know (a machine
	// wrote to it, or its point is gone). Without it, blocks the set holds
	// but To does not would survive the move.
	Reset bool `json:"reset,omitempty"`
}
