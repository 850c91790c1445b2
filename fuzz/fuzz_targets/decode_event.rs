//! `cargo +nightly fuzz run decode_event`: an event body off the work queue (`src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outlook_sync_fuzz::decode_event(data));
