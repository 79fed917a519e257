//! Deliveries handed out by this daemon and not yet settled, and the `AckProgress` that keeps
//! them this daemon's while their calls run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::Subject;
use async_nats::jetstream::{AckKind, message::Acker};

use super::Shared;
use crate::cluster::NatsConnection;
use crate::sync::lock;

/// One delivery in flight.
pub struct Entry {
    /// The ack subject of the delivery.
    pub reply: Subject,
    /// `Delivery::deliveries` as handed out (attempts, untried hand-outs discounted).
    pub reported: u32,
    /// Untried hand-outs recorded for it in the attempts bucket.
    pub untried: u32,
    /// True if the attempts bucket has an entry for it to remove at settle.
    pub discounted: bool,
}

impl Entry {
    /// An acker for the delivery.
    pub fn acker(&self, conn: &NatsConnection) -> Acker {
        Acker::new(conn.jetstream.clone(), Some(self.reply.clone()))
    }
}

/// The deliveries of this daemon by stream sequence.
#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<u64, Entry>>,
}

impl InFlight {
    /// A delivery was handed out.
    pub fn insert(&self, seq: u64, e: Entry) {
        lock(&self.map).insert(seq, e);
    }

    /// Takes the delivery to settle or give back; `None` if it was settled already.
    pub fn take(&self, seq: u64) -> Option<Entry> {
        lock(&self.map).remove(&seq)
    }

    /// A settle that failed: the delivery is still ours.
    pub fn put_back(&self, seq: u64, e: Entry) {
        lock(&self.map).entry(seq).or_insert(e);
    }

    /// How many are in flight.
    pub fn count(&self) -> usize {
        lock(&self.map).len()
    }

    /// Takes every delivery (at close).
    pub fn drain(&self) -> Vec<(u64, Entry)> {
        lock(&self.map).drain().collect()
    }

    fn replies(&self) -> Vec<Subject> {
        lock(&self.map).values().map(|e| e.reply.clone()).collect()
    }
}

/// Sends `AckProgress` for every delivery in flight every third of the ack wait, so a call
/// longer than the ack wait (or one waiting for a retry) keeps its event, while the events of
/// a daemon that died go to the others after one ack wait.
pub async fn keep_alive(s: Arc<Shared>) {
    let period = s.settings.ack_wait / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = s.cancel.cancelled() => return,
        }
        for reply in s.inflight.replies() {
            let acker = Acker::new(s.conn.jetstream.clone(), Some(reply));
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "AckProgress failed; JetStream may hand the event to another daemon after the ack wait");
            }
        }
    }
}
