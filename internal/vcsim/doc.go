// Package vcsim serves govmomi's vCenter simulator (vcsim) in the test
// process for the vSphere driver's tests: a VPX model over HTTPS on
// loopback with a user and password, and an NFS datastore whose files are a
// local directory (the mount), as the driver needs. The driver's unit tests
// (agent/driver/vsphere) and the end-to-end tests (internal/e2e, where the
// agent is another process that reaches the simulator over loopback) share
// it. For tests only.
package vcsim
