//! Decoding and validation of v1 events (see the module docs of [`super`]): a message body
//! through both phases (`structure`, then `semantics`), and a delivery's routing key.

use super::error::{ContractError, Reason, err, shown};
use super::semantics::check_semantics;
use super::structure::decode_structure;
use super::{EventType, ScheduleEvent};

/// The largest message accepted, in bytes (256 KiB). A schedule's longest fields (memo 20,000
/// characters of up to 4 bytes each, 500 participants) fit with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Decodes and validates one message body: the whole v1 contract.
pub fn decode(body: &[u8]) -> Result<ScheduleEvent, ContractError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(err(
            Reason::TooLarge,
            "$",
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES} bytes (shorten the memo or split participants)",
                body.len()
            ),
        ));
    }
    let wire = decode_structure(body)?;
    check_semantics(wire)
}

/// Decodes a delivery: its body ([`decode`]), then its routing key, which must be the body's
/// `event_type` (a body that breaks the contract is refused for that first).
pub fn decode_delivery(body: &[u8], routing_key: &str) -> Result<ScheduleEvent, ContractError> {
    let event = decode(body)?;
    check_routing_key(event.event_type, routing_key)?;
    Ok(event)
}

/// The routing key an event of this type must be published with is its `event_type`: bindings
/// and operators filter by it, so a key that says another type (or none of the three) is refused
/// rather than taken by the body.
pub fn check_routing_key(event_type: EventType, routing_key: &str) -> Result<(), ContractError> {
    let want = event_type.routing_key();
    if routing_key == want {
        return Ok(());
    }
    Err(err(
        Reason::RoutingKeyMismatch,
        "routing_key",
        format!(
            "the message was published with routing key {} but its event_type is {want:?}; publish each event with its event_type as the routing key",
            shown(routing_key)
        ),
    ))
}
