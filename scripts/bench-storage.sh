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
go test -count=1 -timeout 60m -run '^TestIngestThroughput$' ./storage/ | grep -v '^ok\|^PASS'
echo "## storage: scale (flat figures expected)"
go test -count=1 -timeout 180m -run '^TestScale$' ./storage/ | grep -v '^ok\|^PASS'
