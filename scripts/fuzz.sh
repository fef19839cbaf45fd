#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each (default 10s).
# Seed corpora live in each package's testdata/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-10s}
status=0
while IFS= read -r f; do
  dir=$(dirname "$f")
  for name in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(' "$f" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/'); do
    echo "fuzz: $dir $name ($t)"
    if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="$t" "./$dir" >/tmp/ferry-fuzz.log 2>&1; then
      cat /tmp/ferry-fuzz.log; status=1
    fi
  done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' 2>/dev/null || true)
exit $status
