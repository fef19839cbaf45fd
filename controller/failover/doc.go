// Package failover moves machines between sites: it keeps staged replicas
// at recovery-site agents current as points arrive, and runs the failover
// jobs of DESIGN.md "Failover semantics" — failover (unplanned, planned,
// test), change point, commit, cleanup and cancel — as persistent job
// kinds of controller/jobs. Each kind is a kindDef in its own kind_*.go
// file: its lifecycle action (controller/lifecycle), its step list (step
// names in steps.go) and what the shared steps do differently, as data.
// Disks move by rewriting only the blocks that differ between two points,
// so recovery time follows the change, not the disk size.
package failover
