//! `cargo +nightly fuzz run graph_response`: a Graph or token-endpoint answer (`src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outlook_sync_fuzz::graph_response(data));
