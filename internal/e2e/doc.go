// Package e2e runs Ferry end to end: real ferry and ferry-agent processes
// talking TLS over loopback (through a counting proxy where bytes matter),
// real files and filesystems, driven through the CLI as users drive it.
// The harness lives in harness.go; the tests check the issues' acceptance
// lines.
package e2e
