// Package rig runs a controller and agents inside one test process: real
// loopback TLS sockets, real SQLite catalogs and repositories, real files
// in temporary directories. A test starts, stops and restarts the
// controller on the same data directory, enrols agents with tokens,
// protects machines with exec drivers, waits for points and runs jobs
// through the admin API's Go client (controller/admin) — what `ferry` does,
// without building binaries. internal/e2e is the process-based counterpart.
package rig
