// Package enginetest holds the failover engine's table tests: every job
// kind × {succeeds, a step fails, cancel at each step boundary, controller
// restart at each step}, run against a controller and two agents in the
// test process (internal/rig), through the admin API, with step names as
// `jobs show` reports them. Each case ends by comparing the target's disks
// with bytes the test kept itself.
package enginetest
