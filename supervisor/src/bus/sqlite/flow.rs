//! Flow control: which consumer gets the next event (round robin over bounded buffers), and
//! the wake-up handshake with a consumer whose buffer was full.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::super::Delivery;
use super::RoutedAppend;
use super::writer::Topic;

/// A planned round for one topic.
pub(super) struct Plan {
    pub topic: String,
    pub deliver: Vec<(u64, mpsc::OwnedPermit<Delivery>)>,
    pub drop: Vec<u64>,
    pub drop_spilled_from: Option<u64>,
    /// Rows settled from `drop_spilled_from` on (known after the commit).
    pub spilled_dropped: u64,
    /// More events are waiting beyond this round.
    pub more: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deliver.is_empty() && self.drop.is_empty() && self.drop_spilled_from.is_none()
    }
}

/// Reserves room in the next consumer's buffer (round robin), or None when all are full.
pub(super) fn place(t: &mut Topic) -> Option<mpsc::OwnedPermit<Delivery>> {
    for attempt in 0..2 {
        let n = t.consumers.len();
        for i in 0..n {
            let idx = (t.next + i) % n;
            match t.consumers[idx].tx.clone().try_reserve_owned() {
                Ok(permit) => {
                    t.next = (idx + 1) % n;
                    return Some(permit);
                }
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {}
            }
        }
        if attempt == 0 {
            // SYNC POINT with the `swap(false)` in `Hooks::received`: flag first, then look
            // once more, so a consumer that emptied its buffer meanwhile is not missed.
            for s in &t.consumers {
                s.starved.store(true, Ordering::Release);
            }
        }
    }
    None
}

/// Hands the events of a group commit to their consumers before the commit's fsync, so that
/// the plugins run while it does (`BUS_DURABILITY=fsync`). Only an event nothing waits
/// before may go early: its topic has no undelivered event in memory or on disk, and no
/// earlier event of this commit on it stayed behind (full buffers). Returns the sequence
/// numbers handed out; each attempt count is queued in `deferred` as the pump would.
/// Each goes into `handed` (seq -> topic). `behind` carries the topics with an event left behind across the parts of one group
/// commit (its join window, `writer.rs`), so that a later part does not overtake it.
///
/// If the commit then fails, the publisher gets the error and nothing of the event is
/// stored: its completion finds no open row (the settle's `RETURNING` is empty), so no reply
/// is stored for it either, and its number is never reused (`Store::commit_then`).
pub(super) fn hand_out_early(
    topics: &mut HashMap<String, Topic>,
    deferred: &mut Vec<(u64, Instant)>,
    handed: &mut HashMap<u64, String>,
    appends: &[RoutedAppend],
    ended: &[Vec<bool>],
    seqs: &[Vec<u64>],
    behind: &mut HashSet<String>,
) -> HashSet<u64> {
    let mut early = HashSet::new();
    let now = Instant::now();
    for (((events, _, _), ended), seqs) in appends.iter().zip(ended).zip(seqs) {
        for (((topic, event, blob), ended), seq) in events.iter().zip(ended).zip(seqs) {
            if *ended || behind.contains(topic) {
                continue;
            }
            let permit = topics.get_mut(topic).and_then(|t| {
                if t.pending.is_empty() && t.spilled_from.is_none() {
                    place(t)
                } else {
                    None
                }
            });
            let Some(permit) = permit else {
                behind.insert(topic.clone());
                continue;
            };
            handed.insert(*seq, topic.clone());
            permit.send(Delivery {
                seq: *seq,
                topic: topic.clone(),
                event: event.clone(),
                deliveries: 1,
                encoded: Some(Arc::new(blob.clone())),
            });
            deferred.push((*seq, now));
            early.insert(*seq);
        }
    }
    early
}
