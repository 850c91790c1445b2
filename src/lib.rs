//! cyzen → Outlook calendar sync. See ARCHITECTURE.md for the codemap.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod cli;
pub mod config;
pub mod event;
pub mod graph;
pub mod telemetry;

/// Installs rustls' ring provider once per process (TLS to amqps://, rediss:// and Graph).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
