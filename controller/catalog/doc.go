// Package catalog is the controller's own SQLite database: enrolment tokens,
// agents, policies, machines, targets and jobs. Recovery data lives in
// storage's repository, never here.
package catalog
