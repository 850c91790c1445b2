//! Microsoft Graph: the client the flush writes through, and the emulator tests run against.
pub mod client;
pub mod error;
pub mod mapping;
pub mod requests;
pub mod zones;
