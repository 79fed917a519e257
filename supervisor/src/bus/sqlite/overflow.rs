//! The overflow policy: bounded backlogs, nothing dropped silently.
//!
//! - A topic holding `max_topic_backlog` open events sends what is published beyond it to
//!   `<topic>-dead` (reason `overflow`), still acknowledged with a sequence number.
//! - A dead-letter topic keeps at most `dead_letter_max_events` open events: the oldest are
//!   evicted (settled `Dropped`, counted in `workmanager_bus_dead_letters_evicted_total`).

use std::collections::HashMap;

use super::super::dead_letter::{DeadLetterReason, dead_letter_event, dead_letter_topic};
use super::super::{Outcome, is_dead_letter_topic};
use super::writer::Writer;
use super::{Append, RoutedAppend};
use crate::events::ErrorType;

/// Gives every published event its target topic: its own, or `<topic>-dead` (reason
/// `overflow`, the original event inside) once the topic holds `max_topic_backlog` events.
/// Publishers still get one sequence number per event, acknowledged after the commit:
/// nothing is dropped, and the backlog of a topic stays bounded.
pub(super) fn route_overflow(w: &Writer, appends: Vec<Append>) -> Vec<RoutedAppend> {
    let cap = w.opts.max_topic_backlog;
    let mut projected: HashMap<String, u64> = HashMap::new();
    appends
        .into_iter()
        .map(|(topic, events, reply, permit)| {
            let routed = events
                .into_iter()
                .map(|(event, blob)| {
                    let limited = cap > 0 && !is_dead_letter_topic(&topic);
                    let backlog = projected
                        .entry(topic.clone())
                        .or_insert_with(|| w.topics.get(&topic).map_or(0, |t| t.stored));
                    if !limited || *backlog < cap {
                        *backlog += 1;
                        return (topic.clone(), event, blob);
                    }
                    let reason = DeadLetterReason {
                        error_type: ErrorType::Overflow,
                        message: format!(
                            "topic '{topic}' already holds {cap} events waiting for its workers \
                             (TOPIC_MAX_BACKLOG_EVENTS); publishers are outrunning them"
                        ),
                        attempts: 0,
                        worker_id: None,
                    };
                    let dead = dead_letter_event(&topic, &event, &reason);
                    let blob = dead.to_flatbuffer();
                    w.shared.metrics.add_overflowed(&topic, 1);
                    (dead_letter_topic(&topic), dead, blob)
                })
                .collect();
            (routed, reply, permit)
        })
        .collect()
}

/// Evicts the oldest open events of dead-letter topics beyond `dead_letter_max_events`.
pub(super) fn evict_dead_letters(w: &mut Writer) {
    let max = w.opts.dead_letter_max_events.max(1);
    let over: Vec<(String, u64)> = w
        .topics
        .iter()
        .filter(|(name, t)| is_dead_letter_topic(name) && t.stored > max)
        .map(|(name, t)| (name.clone(), t.stored - max))
        .collect();
    for (topic, n) in over {
        match w.store.evict_open(&topic, n) {
            Ok(seqs) => {
                let outcome = Outcome::Dropped {
                    reason: "evicted".into(),
                };
                for seq in &seqs {
                    w.shared.metrics.add_stored(-1);
                    w.shared.metrics.add_settled(outcome.label());
                    if let Some(t) = w.topics.get_mut(&topic) {
                        t.pending.remove(seq);
                        t.stored = t.stored.saturating_sub(1);
                    }
                }
                tracing::warn!(
                    topic,
                    evicted = seqs.len(),
                    max,
                    "bus: dead-letter topic over DEAD_LETTER_MAX_EVENTS; the oldest were evicted"
                );
                w.shared.metrics.add_evicted(&topic, seqs.len() as u64);
            }
            Err(e) => tracing::warn!(topic, error = %e, "bus: cannot evict old dead letters"),
        }
    }
}
