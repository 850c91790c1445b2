//! What can go wrong with an operation on the dead-letter queue, each in words that say what
//! happened and what to do.

use crate::amqp::AmqpError;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(
        "the dead-letter queue {queue} does not exist on this broker (a worker declares it when it starts; check amqp.dead_letter_queue)"
    )]
    NoQueue { queue: String },
    #[error("another dead-letter operation is running ({holder}); try again when it has finished")]
    Busy { holder: String },
    #[error(
        "no dead letter has the id {0} (give a dead-letter id, a prefix of at least 6 characters, or an event id)"
    )]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The I/O error is in the message (not a `source`, whose chain would repeat it).
    #[error("cannot write the archive {path} ({error}); what was not archived stays in the queue")]
    Archive { path: String, error: std::io::Error },
    #[error(
        "RabbitMQ did not take the republished dead letter {id} ({why}); it stays in the dead-letter queue, and nothing was acked that was not safely republished"
    )]
    Publish { id: String, why: String },
    #[error(
        "interrupted; nothing was lost (the batch in flight stays in the queue, and the next operation puts the queue back in order)"
    )]
    Interrupted,
    #[error(
        "the operation lost its lock (Redis unreachable for longer than the lease?) and stopped; the next operation puts the queue back in order"
    )]
    LockLost,
}

impl From<lapin::Error> for DlqError {
    fn from(e: lapin::Error) -> Self {
        DlqError::Amqp(AmqpError::Protocol(e))
    }
}
