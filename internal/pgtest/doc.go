// Package pgtest runs real PostgreSQL clusters and pgbench for tests and
// benchmarks: initdb, pg_ctl start and stop, psql queries, pgbench runs
// with their per-transaction logs, and the balance invariant of pgbench's
// tables. Every program runs as the unprivileged postgres user (the server
// refuses root), through runuser. It is a leaf package.
package pgtest
