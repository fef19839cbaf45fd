// Package points turns recovery points into answers: it resolves point
// specs (latest-processed, latest-app-consistent, an id, a time), judges a
// machine's RPO and health against its policy, and applies retention.
package points
