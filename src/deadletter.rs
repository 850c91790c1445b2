//! Dead letters: the original event plus why it could not be applied, published to the
//! dead-letter exchange with publisher confirms. Ingest dead-letters messages that break the
//! contract; the flush dead-letters changes Graph refused for good or after the retry budget.
//!
//! Headers (all strings unless said): `x-stage` (`ingest` | `flush`), `x-reason` (a stable code),
//! `x-error` (in words), `x-company`, `x-schedule`, `x-revision`, `x-mailbox`, `x-graph-status`
//! (integer), `x-graph-code`, `x-graph-message`, `x-graph-request-id`, `x-attempts` (integer),
//! `x-first-failure`, `x-last-failure` (RFC 3339), `x-original-routing-key`.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::amqp::{AmqpError, Publisher, long_str};

/// Everything known about one failure.
#[derive(Debug, Clone, Default)]
pub struct DeadLetter {
    pub stage: &'static str,
    pub reason: String,
    pub error: String,
    pub company_id: Option<String>,
    pub schedule_id: Option<String>,
    pub revision: Option<u64>,
    pub mailbox: Option<String>,
    pub graph_status: Option<u16>,
    pub graph_code: Option<String>,
    pub graph_message: Option<String>,
    pub graph_request_id: Option<String>,
    pub attempts: u32,
    pub first_failure: Option<jiff::Timestamp>,
    pub last_failure: Option<jiff::Timestamp>,
}

impl DeadLetter {
    pub fn headers(&self, original_routing_key: &str) -> FieldTable {
        let mut t = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            t.insert(ShortString::from(k.to_string()), v);
        };
        put("x-stage", long_str(self.stage));
        put("x-reason", long_str(&self.reason));
        put("x-error", long_str(&self.error));
        put("x-original-routing-key", long_str(original_routing_key));
        if let Some(v) = &self.company_id {
            put("x-company", long_str(v));
        }
        if let Some(v) = &self.schedule_id {
            put("x-schedule", long_str(v));
        }
        if let Some(v) = self.revision {
            put("x-revision", AMQPValue::LongLongInt(v as i64));
        }
        if let Some(v) = &self.mailbox {
            put("x-mailbox", long_str(v));
        }
        if let Some(v) = self.graph_status {
            put("x-graph-status", AMQPValue::LongInt(i32::from(v)));
        }
        if let Some(v) = &self.graph_code {
            put("x-graph-code", long_str(v));
        }
        if let Some(v) = &self.graph_message {
            put("x-graph-message", long_str(v));
        }
        if let Some(v) = &self.graph_request_id {
            put("x-graph-request-id", long_str(v));
        }
        put("x-attempts", AMQPValue::LongInt(self.attempts as i32));
        let now = jiff::Timestamp::now();
        put(
            "x-first-failure",
            long_str(&self.first_failure.unwrap_or(now).to_string()),
        );
        put(
            "x-last-failure",
            long_str(&self.last_failure.unwrap_or(now).to_string()),
        );
        t
    }

    /// Publishes the original body with these headers to the dead-letter exchange and waits for
    /// the broker's confirm. The original message's properties (message id, content type) are
    /// kept.
    pub async fn publish(
        &self,
        publisher: &Publisher,
        dead_letter_exchange: &str,
        original_routing_key: &str,
        original: &BasicProperties,
        body: &[u8],
    ) -> Result<(), AmqpError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        for (k, v) in &self.headers(original_routing_key) {
            headers.insert(k.clone(), v.clone());
        }
        let props = original.clone().with_headers(headers).with_delivery_mode(2);
        publisher
            .publish(dead_letter_exchange, original_routing_key, body, props)
            .await
    }
}
