#!/usr/bin/env bash
# Storage benchmarks (not CI): scale of the point index and ingest/read-back
# throughput against anchors measured in the same run. Called by
# scripts/bench.sh. Knobs: FERRY_BENCH_POINTS (17280), FERRY_BENCH_CHANGES
# (1000), FERRY_BENCH_POOL (10000), FERRY_BENCH_BLOCKS (8192 x 64 KiB),
# FERRY_BENCH_DIR (where the repositories go; default: Go's temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_BENCH=1
echo "## storage: ingest and read-back"
# -v: in package-list mode go test shows a passing test's output only with
# -v; the filter keeps the figures (a test that fails still fails the script).
figures() { grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok ' || true; }
go test -v -count=1 -timeout 60m -run '^TestIngestThroughput$' ./storage/ | figures
echo "## storage: scale (flat figures expected)"
go test -v -count=1 -timeout 180m -run '^TestScale$' ./storage/ | figures
