#!/usr/bin/env bash
# Long variants of the suites that CI runs small (`make soak`): the network
# fault tests of internal/e2e with 512 MiB images instead of 48 MiB
# (FERRY_SOAK=1), the boot drill of a Debian disk five times more, and the
# network lab's own tests. Needs root, like CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
export FERRY_SOAK=1 FERRY_BIN="${FERRY_BIN:-$PWD/bin}"
go test -race -count=1 -timeout 60m ./internal/netlab/
go test -race -count=1 -timeout 60m -run 'TestNet' ./internal/e2e/
go test -count=1 -timeout 60m -run 'TestDrill' ./internal/e2e/
