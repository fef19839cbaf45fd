// Package jobs is the controller's persistent step engine: a job is a list
// of named steps run in order, persisted after every transition so that a
// restarted controller resumes it from the step that was running (steps are
// idempotent). It locks the job's machines (one mutating job per machine),
// retries steps that failed for a retryable reason until the job's
// deadline, stops at a step boundary when cancelled and runs the kind's
// rollback, and lets callers watch progress.
package jobs
