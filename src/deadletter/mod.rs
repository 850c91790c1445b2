//! Dead letters: the original event plus why it could not be applied, published to the
//! dead-letter exchange with publisher confirms. Ingest dead-letters messages that break the
//! contract; the flush dead-letters changes Graph refused for good or after the retry budget.
//! The record and its headers are in [`letter`]; reading them back from the queue in
//! [`record`].
//!
//! Operations on the dead-letter queue (list, summary, show, replay, purge) are in [`ops`], on
//! the command line in [`command`] and over HTTP in [`api`]; [`queue`] holds the technique that
//! makes them safe (a rotation of the queue under a lock, every republish confirmed before its
//! original is acked) and the depth watcher.

pub mod api;
pub mod command;
mod error;
pub mod letter;
mod lock;
pub mod ops;
pub mod queue;
pub mod record;
pub mod table;

pub use error::DlqError;
pub use letter::{
    DEAD_LETTER_ID, DeadLetter, ORIGINAL_ROUTING_KEY, REPLAY_COUNT, REPLAY_HEADER, REPLAYED_AT,
    REPLAYED_FROM,
};
pub use ops::{Dlq, PurgeReport, PurgeRequest, ReplayReport, ReplayRequest, Summary};
pub use queue::{Control, Progress, watch_depth};
pub use record::{Death, Filter, Record, Source};
