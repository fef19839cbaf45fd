#!/usr/bin/env bash
# Protocol throughput on the loopback: TLS+yamux with 1 and 4 streams beside
# raw TCP and plain TLS measured in the same run (median of several runs).
# Prints a markdown table to stdout. Called by scripts/bench.sh (make bench).
#
#   scripts/bench-protocol.sh            # 512 MiB per run, 5 runs
#   FERRY_BENCH_BYTES=$((1<<30)) FERRY_BENCH_RUNS=7 scripts/bench-protocol.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! FERRY_BENCH=1 go test -count=1 -run '^TestThroughput$' -v ./protocol/session/ >"$out" 2>&1; then
  cat "$out" >&2
  echo "bench-protocol: the throughput run failed" >&2
  exit 1
fi
grep -E '^(\||# )' "$out"
