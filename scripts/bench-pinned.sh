#!/usr/bin/env bash
# The ingest figure with the broker and Redis on cores of their own, as in production (issue
# #18): RabbitMQ (beam.smp) and every redis-server are pinned to the last core, the benchmark
# (the bare consumers and the worker's ingest) to the others, for this run only; their earlier
# affinities are put back on exit, even on failure or Ctrl-C.
#
#   scripts/bench-pinned.sh [OUT] [bench arguments…]
#     OUT defaults to /tmp/bench-pinned.md; other arguments go to `outlook-sync bench` (default:
#     --size full --only ingest).
#
# Needs the release build (cargo build --release), taskset (util-linux), and permission to
# change the services' affinity (the same user, or root). On a 2-core machine this gives the
# benchmark one core and the services the other.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/bench-pinned.md}
shift || true
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--size full --only ingest)
bin=target/release/outlook-sync
[ -x "$bin" ] || { echo "bench-pinned: $bin is missing; run: cargo build --release" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench-pinned: taskset is missing (Debian: util-linux)" >&2; exit 1; }
cores=$(nproc)
[ "$cores" -ge 2 ] || { echo "bench-pinned: needs 2 cores or more, this machine has $cores" >&2; exit 1; }
last=$((cores - 1))
bench_cpus="0-$((last - 1))"
services=$(pgrep -x beam.smp || true; pgrep -x redis-server || true)
[ -n "$services" ] || { echo "bench-pinned: neither RabbitMQ (beam.smp) nor redis-server is running; start them with scripts/services.sh" >&2; exit 1; }
saved=()
for pid in $services; do
  saved+=("$pid:$(taskset -p -c "$pid" | sed 's/.*: //')")
done
restore() {
  for s in "${saved[@]}"; do
    taskset -a -p -c "${s#*:}" "${s%%:*}" >/dev/null 2>&1 || true
  done
}
trap restore EXIT
for pid in $services; do
  taskset -a -p -c "$last" "$pid" >/dev/null
done
echo "bench-pinned: RabbitMQ and Redis on core $last, the benchmark on cores $bench_cpus; writing $out" >&2
taskset -c "$bench_cpus" "$bin" bench "${args[@]}" --out "$out"
