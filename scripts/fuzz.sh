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
    # A found crash always writes its input under testdata/fuzz and says so.
    # Go's fuzzing coordinator can also end a run with "context deadline
    # exceeded" and no input when a worker is slow to stop at -fuzztime on a
    # loaded machine: that is retried once, and fails only if it repeats.
    for try in 1 2; do
      if go test -run='^$' -fuzz="^${name}\$" -fuzztime="$t" "./$dir" >/tmp/ferry-fuzz.log 2>&1; then
        break
      fi
      if [ "$try" = 1 ] && ! grep -q 'Failing input written to' /tmp/ferry-fuzz.log &&
         grep -q 'context deadline exceeded' /tmp/ferry-fuzz.log; then
        echo "fuzz: $name: the fuzzing coordinator timed out stopping its workers (no failing input); retrying once"
        continue
      fi
      cat /tmp/ferry-fuzz.log; status=1
      break
    done
  done
done < <(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' 2>/dev/null || true)
exit $status
