// Package lifecycle is the machine lifecycle as one table: for every state
// and every action, the state the action leads to or the reason it is
// refused and what to do instead. The admin API's checks, `machines show`'s
// allowed actions, the CLI's refusals and the failover jobs' own checks all
// come from it; docs/failover.md shows it (checked by a test).
package lifecycle
