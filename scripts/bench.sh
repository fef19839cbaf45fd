#!/usr/bin/env bash
# make bench: the figures of BENCHMARKS.md, each against an anchor measured
# in the same run. Runs as root (loop mounts, drop_caches); installs the
# anchors (rsync, zstd) and xfsprogs from Debian; then runs, in this order,
# scripts/bench-storage.sh and scripts/bench-protocol.sh (when present) and
# the replication cases (bench/ferrybench). Everything goes to stdout and,
# as one markdown report, to bench/results.md (not committed).
#
#   make bench                      # full run (~20 min on 2 cores)
#   QUICK=1 make bench              # smoke run: small images, one run each
#   FERRYBENCH_ARGS='-cases sync,scan -runs 5' scripts/bench.sh
#
# make bench builds bin/ first; run directly, this script expects bin/ built.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root (loop mounts, drop_caches): sudo make bench" >&2
  exit 1
fi
for b in bin/ferry bin/ferry-agent; do
  [ -x "$b" ] || { echo "bench: $b missing: run make build (make bench does)" >&2; exit 1; }
done

echo "## installing the anchors (rsync, zstd), xfsprogs and postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# iproute2 and nftables: the network lab of the WAN cases (internal/netlab).
# postgresql: the tracker-overhead case (pgtrack) runs pgbench.
apt-get install -y -qq --no-install-recommends rsync zstd xfsprogs iproute2 nftables postgresql >&2

quick=()
if [ "${QUICK:-0}" = 1 ]; then
  quick=(-quick)
  # Smaller figures from the other scripts too, unless set by the caller.
  export FERRY_BENCH_POINTS="${FERRY_BENCH_POINTS:-1000}" FERRY_BENCH_BLOCKS="${FERRY_BENCH_BLOCKS:-2048}"
  export FERRY_BENCH_BYTES="${FERRY_BENCH_BYTES:-$((128 << 20))}" FERRY_BENCH_RUNS="${FERRY_BENCH_RUNS:-1}"
fi

mkdir -p bench/work
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
status=0

# part NAME SCRIPT: run another engineer's bench script if it exists, show
# its output as it comes and keep it for the report; a failure is reported
# and the rest still runs.
part() {
  local name=$1 script=$2
  if [ ! -x "$script" ]; then
    echo "($script not present: skipped)" >"$parts/$name.md"
    return
  fi
  echo "## $name: $script" >&2
  if ! "$script" 2>&1 | tee "$parts/$name.md"; then
    printf '\n**FAILED**: %s exited non-zero; its output is above.\n' "$script" | tee -a "$parts/$name.md"
    status=1
  fi
}
part storage scripts/bench-storage.sh
part protocol scripts/bench-protocol.sh

echo "## replication: bench/ferrybench" >&2
go build -o bench/work/ferrybench ./bench/ferrybench
# shellcheck disable=SC2086 # FERRYBENCH_ARGS is a list of flags
if ! bench/work/ferrybench "${quick[@]}" -bin bin -work bench/work -results "$parts/replication.md" ${FERRYBENCH_ARGS:-}; then
  status=1
fi

{
  echo "# make bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git describe --always --dirty 2>/dev/null || echo unknown)${quick:+ (QUICK=1 smoke run)}"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "## Storage (scripts/bench-storage.sh)"
  echo
  cat "$parts/storage.md"
  echo
  echo "## Protocol (scripts/bench-protocol.sh)"
  echo
  cat "$parts/protocol.md"
  echo
  cat "$parts/replication.md" 2>/dev/null || echo "(the replication cases produced no report)"
} >bench/results.md
echo "bench: report written to bench/results.md" >&2
exit $status
