//! Dead letters: the original event, published on `<topic>-dead` with extensions naming why.
//!
//! | extension | value |
//! |---|---|
//! | `deadletterreason` | the error type (`worker_error`, `crash`, `timeout`, ...) |
//! | `deadlettererror` | the error message, cut to [`MAX_DEAD_LETTER_ERROR_LEN`] bytes |
//! | `deadletterattempts` | how many attempts were made |
//! | `deadletterworker` | the worker that failed, when known |
//! | `deadlettertopic` | the topic the event was published on |
//! | `deadlettertime` | when it was dead-lettered (RFC 3339) |
//!
//! Everything else (id, data, other extensions, `correlationid` first) is kept as it was.

use wm_shared::CloudEvent;

use super::{Bus, BusError};
use crate::events::{ErrorType, rfc3339_now};

/// What is appended to a topic name to get its dead-letter topic (as in the original).
pub const DEAD_LETTER_SUFFIX: &str = "-dead";

/// The longest `deadlettererror` value, in bytes.
pub const MAX_DEAD_LETTER_ERROR_LEN: usize = 1024;

/// Why an event is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    pub error_type: ErrorType,
    pub message: String,
    pub attempts: u32,
    pub worker_id: Option<String>,
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}{DEAD_LETTER_SUFFIX}")
}

/// The dead letter for `event` (see the module docs).
pub fn dead_letter_event(topic: &str, event: &CloudEvent, reason: &DeadLetterReason) -> CloudEvent {
    let mut ev = event.clone();
    let mut message = reason.message.as_str();
    if message.len() > MAX_DEAD_LETTER_ERROR_LEN {
        let mut cut = MAX_DEAD_LETTER_ERROR_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message = &message[..cut];
    }
    // The names below are valid extension names, so setting them cannot fail.
    let mut set = |name: &str, value: String| {
        let _ = ev.set_extension(name, value);
    };
    set("deadletterreason", reason.error_type.as_str().to_string());
    set("deadlettererror", message.to_string());
    set("deadletterattempts", reason.attempts.to_string());
    if let Some(w) = &reason.worker_id {
        set("deadletterworker", w.clone());
    }
    set("deadlettertopic", topic.to_string());
    set("deadlettertime", rfc3339_now());
    ev
}

/// Publishes `event` (which was published on `topic`) on `<topic>-dead` with the reason
/// extensions; returns the dead letter's sequence number once it is durable.
pub async fn dead_letter(
    bus: &dyn Bus,
    topic: &str,
    event: &CloudEvent,
    reason: &DeadLetterReason,
) -> Result<u64, BusError> {
    let dead = dead_letter_event(topic, event, reason);
    let dead_topic = dead_letter_topic(topic);
    let seqs = bus.publish(&dead_topic, vec![dead]).await?;
    tracing::info!(
        topic,
        event_id = event.id,
        reason = reason.error_type.as_str(),
        attempts = reason.attempts,
        "event dead-lettered"
    );
    seqs.first().copied().ok_or(BusError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_the_event_and_adds_the_reason() {
        let mut e = CloudEvent::new("1", "t", "s");
        e.set_extension("correlationid", "c1").unwrap();
        e.set_extension("deadletterattempts", "old").unwrap();
        e.data = Some(b"{}".to_vec());
        let reason = DeadLetterReason {
            error_type: ErrorType::Crash,
            message: "é".repeat(MAX_DEAD_LETTER_ERROR_LEN),
            attempts: 3,
            worker_id: Some("w1".into()),
        };
        let d = dead_letter_event("orders", &e, &reason);
        d.validate().unwrap();
        assert_eq!(d.extensions()[0].0, "correlationid");
        assert_eq!(d.extension("deadletterreason"), Some("crash"));
        assert_eq!(d.extension("deadletterattempts"), Some("3"));
        assert_eq!(d.extension("deadletterworker"), Some("w1"));
        assert_eq!(d.extension("deadlettertopic"), Some("orders"));
        let msg = d.extension("deadlettererror").unwrap();
        assert_eq!(msg.len(), MAX_DEAD_LETTER_ERROR_LEN);
        assert_eq!(d.data, e.data);
        assert_eq!(d.id, e.id);
        assert_eq!(dead_letter_topic("orders"), "orders-dead");
    }
}
