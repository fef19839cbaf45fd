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
	MethodTargetStatus   = "target.status"   // what a machine's disk sets hold
	MethodTargetPromote  = "target.promote"  // staged → live (rename; idempotent)
	MethodTargetDemote   = "target.demote"   // live → staged (rollback; idempotent)
	MethodTargetClone    = "target.clone"    // staged → test-<job> (reflink where possible)
	MethodTargetRemove   = "target.remove"   // delete a disk set (a test, or a committed machine's staging)
	MethodTargetDriver   = "target.driver"   // run the target's hypervisor driver
	MethodTargetShip     = "target.ship"     // ship a disk set's content to the controller as a named point
	MethodTargetAdopt    = "target.adopt"    // make the home disks, where they are, the home disk set
	MethodTargetConvert  = "target.convert"  // write a disk set's disks in the format the target's hypervisor wants
	MethodTargetValidate = "target.validate" // check a hypervisor driver's options and connectivity (targets add)

	// MethodTargetCloneHome copies the home set (the machine's own disks)
	// into test-<job> under another directory: failback --test.
	MethodTargetCloneHome = "target.clone-home"
	// MethodTargetCheckHome (TargetAdoptRequest) checks that target.adopt
	// could take the home disks, writing and locking nothing: re-protect
	// asks before it stops anything.
	MethodTargetCheckHome = "target.check-home"
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
	// Paths, for the home set only, are the disks' own files (by index in
	// Disks): the home disks are kept where they are and updated in place;
	// the set directory holds only state.json.
	Paths []string `json:"paths,omitempty"`
	// Formats, for the home set only, are the home disks' formats (by
	// index in Disks), recorded at protect and forced on every in-place
	// write; "" (or absent: adopted before formats were recorded)
	// detects the format from the file's magic.
	Formats []string `json:"formats,omitempty"`
}

// TargetDisk is one disk of a disk set.
type TargetDisk struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	Path      string `json:"path,omitempty"` // filled in by the agent in answers
	// Format, in target.adopt and target.check-home only, is the home
	// disk's format recorded at protect (raw, qcow2, vhdx): the agent
	// takes the file so and never from its magic; "" detects it.
	Format string `json:"format,omitempty"`
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
	// RepositoryKey is the fingerprint of the repository private key the
	// agent holds ("" when none): the controller then sends it sealed
	// chunks of that repository. Never the key itself.
	RepositoryKey string `json:"repository_key,omitempty"`
	// FreeBytes is the space left for the agent's writes on the
	// filesystem holding the request's directory (0: unknown, e.g. an
	// older agent or another platform): a plan's dry run shows it.
	FreeBytes int64 `json:"free_bytes,omitempty"`
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
	// Paths are the clone's disk files (target.clone-home only).
	Paths []string `json:"paths,omitempty"`
}

// TargetCloneHomeRequest clones the home set Ref (set "home") into the
// test set To ("test-<job>") under ToDir (failback --test).
type TargetCloneHomeRequest struct {
	Ref   TargetRef `json:"ref"`
	ToDir string    `json:"to_dir"`
	To    string    `json:"to"`
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
	// Hypervisor selects a driver other than exec (Kind "" is exec, which
	// uses Commands and Env as before) and the machine it acts on.
	Hypervisor
}

// Driver kinds (Hypervisor.Kind).
const (
	DriverExec    = "exec"
	DriverLibvirt = "libvirt"
	DriverVSphere = "vsphere"
	DriverHyperV  = "hyperv"
)

// ActionRemove (target.driver, non-exec kinds) stops the machine if needed
// and deletes its definition, never its disks: test failover cleanup.
const ActionRemove = "remove"

// Hypervisor is the part of a driver request that a hypervisor driver
// (libvirt, vsphere, hyperv) needs: its kind, the target's (or the source
// machine's) driver options, and the machine from its hardware description
// with the network map applied. Added in protocol 1 without a version bump:
// all fields are optional and an exec request leaves them out.
type Hypervisor struct {
	Kind    string            `json:"kind,omitempty"`    // exec (""), libvirt, vsphere, hyperv
	Options map[string]string `json:"options,omitempty"` // the driver's options (uri, url, datastore, switch, …)
	Spec    *MachineSpec      `json:"spec,omitempty"`    // required for non-exec kinds
	// Home marks the machine's home-site driver (its source driver): the
	// agent only powers the existing machine (never defines or removes
	// it), whichever method carries the request (driver.run always does;
	// target.driver does for a revert's start at home).
	Home bool `json:"home,omitempty"`
}

// MachineSpec is the machine a hypervisor driver defines and runs
// (agent/driver.Spec on the wire).
type MachineSpec struct {
	Name     string        `json:"name"`               // the hypervisor's name: the machine, or MACHINE-test
	Machine  string        `json:"machine"`            // the Ferry machine
	Test     bool          `json:"test,omitempty"`     // keep it off production networks
	CPUs     int           `json:"cpus,omitempty"`     // 0: the driver's default
	Memory   int64         `json:"memory,omitempty"`   // bytes; 0: the driver's default
	Firmware string        `json:"firmware,omitempty"` // bios ("") or uefi
	NICs     []MachineNIC  `json:"nics,omitempty"`
	Disks    []MachineDisk `json:"disks"`
	NewMACs  bool          `json:"new_macs,omitempty"`
}

// MachineNIC is one NIC: its source network, the network it joins at this
// site (after the network map), its MAC, and a re-IP address.
type MachineNIC struct {
	Name    string `json:"name"`
	Network string `json:"network"`
	MAC     string `json:"mac,omitempty"`
	Address string `json:"address,omitempty"` // ADDR/PREFIX
	Gateway string `json:"gateway,omitempty"`
}

// MachineDisk is one disk file at this site.
type MachineDisk struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Format string `json:"format,omitempty"` // raw, qcow2, vhdx, vmdk
}

// TargetValidateRequest asks the agent to check a hypervisor driver's
// options and reach its hypervisor (libvirtd, vCenter, Hyper-V), and that
// the networks named exist there. The answer is an empty body, or an error:
// invalid (options), not_found (a network, a datastore), unauthorized,
// unavailable (cannot connect), failed_precondition (e.g. a driver this
// agent was built without).
type TargetValidateRequest struct {
	Kind     string            `json:"kind"`
	Options  map[string]string `json:"options,omitempty"`
	Networks []string          `json:"networks,omitempty"` // destination networks (and the test network) to check
	Dir      string            `json:"dir,omitempty"`      // the target directory, for drivers that check it
	// Home asks for the check of a machine's home-site driver (protect
	// --driver): only the options a driver takes there, and a connection;
	// no networks, no directory.
	Home bool `json:"home,omitempty"`
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

// TargetAdoptRequest asks the home agent to keep a machine's own disks
// (Paths: raw files or block devices, qcow2 or VHDX images, by index in
// Disks) as its home disk set (Ref.Set
// "home"): state.json in Ref's set directory, the disks updated in place
// by later moves. The set is recorded as written (its content is unknown
// until a move from a point the controller knows it holds). Adopting the
// same paths again is a no-op.
type TargetAdoptRequest struct {
	Ref   TargetRef    `json:"ref"`
	Disks []TargetDisk `json:"disks"`
	Paths []string     `json:"paths"`
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
	// Sealed says that the blocks are an encrypted repository's chunks as
	// stored (data.FlagSealed), for the agent to open with the repository
	// key it holds (`ferry-agent key install`). Absent: plaintext blocks.
	Sealed *SealedRestore `json:"sealed,omitempty"`
}

// SealedRestore names the repository whose sealed chunks a restore stream
// carries.
type SealedRestore struct {
	RepoID string `json:"repo_id"` // 32 hex digits: the AAD of the data-key wrap
	// KeyFingerprint is the repository public key's fingerprint (lowercase
	// hex SHA-256 of its 32 bytes); an agent holding another key refuses.
	KeyFingerprint string `json:"key_fingerprint"`
}
