//! Microsoft Graph: the client the flush writes through, and the emulator tests run against.
pub mod emulator;
