//! cyzen → Outlook calendar sync. See ARCHITECTURE.md for the codemap.
#![forbid(unsafe_code)]
// No function over 100 lines in production code (the threshold is in clippy.toml).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod admin;
pub mod amqp;
#[cfg(feature = "emulator")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod deadletter;
#[cfg(feature = "emulator")]
pub mod demo;
pub mod event;
pub mod fleet;
pub mod graph;
pub mod ingest;
pub mod internal_events;
pub mod ledger;
pub mod metrics;
pub mod repair;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenants;
pub mod terminal;
pub mod window;
pub mod worker;

/// Installs rustls' ring provider once per process (TLS to amqps://, rediss:// and Graph).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
