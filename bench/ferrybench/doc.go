// Command ferrybench runs the replication cases of BENCHMARKS.md for
// `make bench` (called by scripts/bench.sh, as root): it drives real
// `ferry serve` and `ferry-agent run` processes over TLS on the loopback,
// with every agent byte passing through a counting TCP proxy, on an XFS
// loop mount (reflink path) and an ext4 loop mount (hash-scan path), and
// measures each figure against an anchor tool run in the same process on
// the same data (zstd, an rsync daemon, cat). It prints the table (case,
// Ferry median, anchor median, ratio, target, PASS/MISS), writes it with
// the per-run figures to a markdown file, and for every MISS reruns the
// case once with --cpu-profile and appends the top of each profile.
//
// Its one job is measuring; it never changes what it measures.
package main
