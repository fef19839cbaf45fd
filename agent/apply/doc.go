// Package apply keeps a machine's disk sets on a recovery-site host: the
// directories DIR/M/<set>/ ("staged", "live", "test-<job>") of sparse raw
// disk files and the state.json that says which point they hold
// (protocol/msg target.go). It applies restore streams to them — verified
// whole blocks written in place, zero blocks punched out, one fsync at the
// end, the state moved only once the data is durable — and promotes,
// demotes, clones and removes them, one operation per machine at a time.
//
// The "home" set is a machine's own home disks, adopted where they are and
// written in place: a move into them keeps the blocks it overwrites in an
// undo log first and is rolled back from it if it does not finish
// (undo.go), and the site holds them open, locked against QEMU, while they
// are a replica (hold.go). Formats: docs/agent-formats.md.
package apply
