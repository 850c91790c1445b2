#!/usr/bin/env bash
# A CI-sized fuzz run of the two cargo-fuzz targets in fuzz/ (decode_event, graph_response):
# FUZZ_SECONDS each (default 60), starting from the contract's examples and typical Graph
# answers, with libFuzzer's memory limits (a single allocation over 256 MiB or an RSS over
# 1 GiB is a failure) and a 10 s per-input timeout. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
#
# cargo-fuzz needs a nightly toolchain and `cargo install cargo-fuzz`. Where either is missing
# (the standard machine has only stable), the same harness (fuzz/src/lib.rs) runs as the
# libFuzzer-free smoke test instead: FUZZ_SMOKE_INPUTS seeded random and structure-aware inputs
# (default 1,000,000) through tests/it/bad_input.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"

if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  corpus=fuzz/corpus
  mkdir -p "$corpus/decode_event" "$corpus/graph_response"
  cp schemas/examples/valid/*.json schemas/examples/invalid/*.json "$corpus/decode_event/"
  cp fuzz/seeds/graph_response/* "$corpus/graph_response/"
  cd fuzz
  for target in decode_event graph_response; do
    case "$target" in
      decode_event) dict=dict/event.dict; max_len=300000 ;;
      graph_response) dict=dict/graph.dict; max_len=65536 ;;
    esac
    echo "fuzz: $target for ${secs}s"
    cargo +nightly fuzz run "$target" -O "corpus/$target" -- \
      -max_total_time="$secs" -dict="$dict" -max_len="$max_len" \
      -rss_limit_mb=1024 -malloc_limit_mb=256 -timeout=10 -print_final_stats=1
  done
else
  echo "fuzz: nightly or cargo-fuzz is missing; running the libFuzzer-free smoke test instead" >&2
  FUZZ_SMOKE_INPUTS="${FUZZ_SMOKE_INPUTS:-1000000}" \
    cargo test --locked --test it -- --nocapture bad_input::the_fuzz_targets
fi
