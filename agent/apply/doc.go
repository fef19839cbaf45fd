// Package apply keeps a machine's disk sets on a recovery-site host: the
// directories DIR/M/<set>/ ("staged", "live", "test-<job>") of sparse raw
// disk files and the state.json that says which point they hold
// (protocol/msg target.go). It applies restore streams to them — verified
// whole blocks written in place, zero blocks punched out, one fsync at the
// end, the state moved only once the data is durable — and promotes,
// demotes, clones and removes them, one operation per machine at a time.
package apply
