package api

import "time"

// MachineCheck is what `ferry failover --plan P --dry-run` found for one
// member: the point it would use, the target, the free space there
// against what the move needs — or why the member is skipped, or the
// check that failed.
type MachineCheck struct {
	Machine     string    `json:"machine"`
	Group       int       `json:"group"`
	Skipped     string    `json:"skipped,omitempty"`
	Error       string    `json:"error,omitempty"`
	PointID     int64     `json:"point_id,omitempty"`
	PointTime   time.Time `json:"point_time,omitzero"`
	Consistency string    `json:"consistency,omitempty"`
	// Fresh: the point is the newest stored one, but with the source
	// reachable `latest` takes a fresh cycle first.
	Fresh     bool   `json:"fresh,omitempty"`
	Target    string `json:"target,omitempty"`
	TargetDir string `json:"target_dir,omitempty"`
	// FreeBytes is the free space in the target directory's filesystem
	// (0: the agent did not say); NeedBytes what the move may write
	// there at most.
	FreeBytes int64 `json:"free_bytes,omitempty"`
	NeedBytes int64 `json:"need_bytes"`
	// IPs is the plan's re-IP of the member: it overrides, NIC by NIC,
	// the machine's own (protect --ip).
	IPs []NICAddress `json:"ips,omitempty"`
}
