//! RabbitMQ: the topology this service declares (every argument explicit, because RabbitMQ 4.x
//! changed several defaults), connections, and publishing with publisher confirms.
//!
//! ```text
//! cyzen.schedules (topic) ──schedule.*──▶ outlook-sync.work (quorum, x-delivery-limit,
//!                                            │  at-least-once dead-lettering, reject-publish)
//!                                            ▼ rejected / over the delivery limit / published by us
//!                         outlook-sync.dead (fanout) ──▶ outlook-sync.dead (quorum)
//! ```

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::AmqpConfig;

/// An AMQP failure, always retryable by reconnecting (the caller decides how often).
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("RabbitMQ at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ: {0}")]
    Protocol(#[from] lapin::Error),
    #[error("the RabbitMQ consumer stream ended")]
    StreamEnded,
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error("RabbitMQ refused (nacked) a publish to {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    /// A queue exists with other arguments than this service declares: retrying cannot help.
    #[error("{0}")]
    Inequivalent(String),
}

impl AmqpError {
    /// Retrying cannot fix it: the broker's state or this configuration must change first.
    pub fn is_permanent(&self) -> bool {
        matches!(self, AmqpError::Inequivalent(_))
    }
}

/// A queue declared with other arguments (RabbitMQ's `PRECONDITION_FAILED - inequivalent arg`)
/// in plain words: the argument, what this worker asks for, what the queue has, and what to do.
fn inequivalent(queue: &str, e: lapin::Error) -> AmqpError {
    let text = e.to_string();
    if !text.contains("PRECONDITION_FAILED") {
        return AmqpError::Protocol(e);
    }
    let quoted = |after: &str| -> Option<String> {
        let rest = &text[text.find(after)? + after.len()..];
        let start = rest.find('\'')? + 1;
        let end = start + rest[start..].find('\'')?;
        Some(rest[start..end].to_string())
    };
    let arg = quoted("inequivalent arg").unwrap_or_else(|| "an argument".into());
    let received = quoted("received the value").unwrap_or_else(|| "?".into());
    let current = text
        .split("but current is ")
        .nth(1)
        .map(|c| c.trim_end_matches(['"', ')', '}']).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let setting = match arg.as_str() {
        "x-delivery-limit" => "amqp.delivery_limit",
        "x-dead-letter-exchange" => "amqp.dead_letter_exchange",
        _ => "(fixed by this service)",
    };
    AmqpError::Inequivalent(format!(
        "RabbitMQ already has the queue {queue} with another {arg}: this worker declares it as \
         {received} ({setting}), the queue has {current}. Either align the setting with the \
         queue, or move the queue's messages away and delete the queue so that the worker \
         declares it again (`rabbitmqctl delete_queue {queue}`); the worker does not consume \
         until then"
    ))
}

/// The URL without its password, safe to log: AMQP's and Redis's, including the forms a URL
/// parser refuses (`redis+cluster://a:6379,b:6379`, several hosts), whose user information is
/// cut out by hand.
pub fn redacted(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        return u.to_string();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable url)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, hosts)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{hosts}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod redacted_tests {
    use super::redacted;

    #[test]
    fn a_logged_url_never_shows_its_password_even_with_several_hosts() {
        assert_eq!(
            redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redacted("redis+cluster://:s3cret@10.0.0.1:6379,10.0.0.2:6379"),
            "redis+cluster://:***@10.0.0.1:6379,10.0.0.2:6379"
        );
        assert_eq!(
            redacted("redis+sentinel://u:p@a:26379,b:26379/mymaster"),
            "redis+sentinel://u:***@a:26379,b:26379/mymaster"
        );
        assert_eq!(
            redacted("redis+cluster://a:6379,b:6379"),
            "redis+cluster://a:6379,b:6379"
        );
        assert_eq!(redacted("not a url"), "(unparsable url)");
    }
}

/// How long opening an AMQP connection may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    // A broker that accepts the TCP connection but never answers must not hang the caller.
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(r) => r.map_err(|source| AmqpError::Connect {
            endpoint: redacted(url),
            source,
        }),
        Err(_) => Err(AmqpError::Interrupted(format!(
            "RabbitMQ at {} did not complete the connection within {} s",
            redacted(url),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Names and arguments of everything this service declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
}

/// The binding of the work queue: every schedule event.
pub const WORK_BINDING: &str = "schedule.*";

impl Topology {
    pub fn new(cfg: &AmqpConfig) -> Self {
        Self {
            exchange: cfg.exchange.clone(),
            queue: cfg.queue.clone(),
            dead_letter_exchange: cfg.dead_letter_exchange.clone(),
            dead_letter_queue: cfg.dead_letter_queue.clone(),
            delivery_limit: cfg.delivery_limit,
        }
    }

    /// Arguments of the work queue. `deploy/rabbitmq/definitions.json` must say the same.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), long_str("quorum"));
        t.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        t.insert(
            "x-dead-letter-exchange".into(),
            long_str(&self.dead_letter_exchange),
        );
        t.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
        t.insert("x-overflow".into(), long_str("reject-publish"));
        t
    }

    /// Arguments of the dead-letter queue: quorum, so dead letters survive a broker restart.
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), long_str("quorum"));
        t
    }

    /// Declares exchanges, queues and bindings. Idempotent; fails if an existing queue was
    /// declared with other arguments (RabbitMQ answers PRECONDITION_FAILED).
    pub async fn declare(&self, ch: &Channel) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(
            self.dead_letter_queue.as_str().into(),
            qopts,
            self.dead_letter_queue_arguments(),
        )
        .await
        .map_err(|e| inequivalent(&self.dead_letter_queue, e))?;
        ch.queue_bind(
            self.dead_letter_queue.as_str().into(),
            self.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            self.queue.as_str().into(),
            qopts,
            self.work_queue_arguments(),
        )
        .await
        .map_err(|e| inequivalent(&self.queue, e))?;
        ch.queue_bind(
            self.queue.as_str().into(),
            self.exchange.as_str().into(),
            WORK_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// A channel in confirm mode: every publish is awaited until the broker acks it.
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(conn: &Connection) -> Result<Self, AmqpError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm; a nack is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), AmqpError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(AmqpError::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            });
        }
        Ok(())
    }
}

/// Properties of an event as the contract prescribes: JSON, persistent, message id = event id.
pub fn event_properties(event_id: &str, event_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event_id.to_string()))
        .with_type(ShortString::from(event_type.to_string()))
        .with_timestamp(jiff::Timestamp::now().as_second().max(0) as u64)
}

/// Ready messages in a queue (a passive declare: fails if the queue does not exist).
pub async fn ready_count(ch: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}
