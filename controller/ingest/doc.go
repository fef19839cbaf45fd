// Package ingest is the controller's side of replication cycles: it opens
// (or resumes) a machine's pending point, answers each manifest part with
// what it still needs, verifies and stores each batch durably before
// acknowledging it, and turns a complete cycle into a recovery point.
package ingest
