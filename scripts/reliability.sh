#!/usr/bin/env bash
# Reproduces RELIABILITY.md's numbers with one command: the convergence property over many seeds
# (default 1000; CONVERGENCE_SEEDS=N for more), the fault-injection tests (proxy cuts and stalls,
# Redis restarts), the bad-input burst, the fuzz smoke run (default 1,000,000 inputs;
# FUZZ_SMOKE_INPUTS=N), and the secret-leak scenario, one test at a time so the timings are not
# disturbed by each other. Writes the raw numbers to target/reliability/numbers.txt and a
# Markdown summary to target/reliability/numbers.md, and prints the summary.
#
#   scripts/reliability.sh                      # about 4 minutes on 2 cores
#   CONVERGENCE_SEEDS=5000 scripts/reliability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh

out=target/reliability
mkdir -p "$out"
export CONVERGENCE_SEEDS="${CONVERGENCE_SEEDS:-1000}"
export FUZZ_SMOKE_INPUTS="${FUZZ_SMOKE_INPUTS:-1000000}"

status=0
cargo test --locked --test it -- --nocapture --test-threads 1 \
  convergence:: faults:: bad_input:: security:: 2>&1 | tee "$out/run.log" || status=$?

grep -o 'RELIABILITY .*' "$out/run.log" > "$out/numbers.txt" || true
{
  echo "# Reliability run of $(date -u +%Y-%m-%dT%H:%M:%SZ) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo
  while read -r _ test rest; do
    echo "## $test"
    echo
    echo "| measure | value |"
    echo "|---|---|"
    # key=value pairs; a value may be a quoted string with spaces.
    echo "$rest" | grep -oE '[a-z_0-9]+=("[^"]*"|[^ ]+)' | sed -E 's/^([^=]+)=(.*)$/| \1 | \2 |/'
    echo
  done < "$out/numbers.txt"
  if [ "$status" -ne 0 ]; then
    echo "**Some tests failed (cargo test exited $status): see $out/run.log.**"
  fi
} > "$out/numbers.md"
cat "$out/numbers.md"
exit "$status"
