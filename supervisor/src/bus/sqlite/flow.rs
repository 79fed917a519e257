//! Flow control: which consumer gets the next event (round robin over bounded buffers), and
//! the wake-up handshake with a consumer whose buffer was full.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::super::Delivery;
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
