// Package alerts decides which alert incidents are open (conditions.go)
// and delivers notifications to webhooks in order, with retries
// (notifier.go). The controller persists incidents and rules in its
// catalog and calls both.
package alerts
