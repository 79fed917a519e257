//! A local consumer of a topic: pulls from the topic's shared durable consumer only as its
//! buffer has room, so nothing waits in this daemon that another daemon could be processing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wm_shared::CloudEvent;

use super::Shared;
use super::inflight::Entry;
use crate::bus::{Consumer, ConsumerHooks, Delivery};
use crate::sync::lock;

/// How long one pull waits for events before it is renewed: at most 5 s and under half the
/// ack wait, so that a pull left behind by a consumer that went away has expired before an
/// event it gave back is due again (see [`give_back`]).
pub fn pull_expires(ack_wait: Duration) -> Duration {
    (ack_wait / 2).min(Duration::from_secs(5))
}

/// A consumer of `topic` on this daemon.
pub fn consume(s: Arc<Shared>, topic: &str) -> Consumer {
    let (tx, rx) = mpsc::channel(s.opts.consumer_prefetch.max(1));
    let cancel = s.cancel.child_token();
    *lock(&s.consuming).entry(topic.to_string()).or_default() += 1;
    let task = tokio::spawn(feed(s.clone(), topic.to_string(), tx, cancel.clone()));
    Consumer::new(
        topic.to_string(),
        rx,
        Box::new(Hooks {
            s,
            topic: topic.to_string(),
            cancel,
            task: std::sync::Mutex::new(Some(task)),
        }),
    )
}

struct Hooks {
    s: Arc<Shared>,
    topic: String,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ConsumerHooks for Hooks {
    fn received(&self) {}

    fn unsubscribed(&self, mut rx: mpsc::Receiver<Delivery>) {
        self.cancel.cancel();
        if let Some(n) = lock(&self.s.consuming).get_mut(&self.topic) {
            *n = n.saturating_sub(1);
        }
        let task = lock(&self.task).take();
        let s = self.s.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left (process exit): JetStream redelivers after the ack wait.
            return;
        };
        rt.spawn(async move {
            // The feeder has stopped sending before what it buffered is given back.
            if let Some(t) = task {
                let _ = t.await;
            }
            rx.close();
            let mut left: Vec<Delivery> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
            left.sort_by_key(|d| d.seq);
            for d in left {
                if let Some(entry) = s.inflight.take(d.seq) {
                    give_back(&s, d.seq, &entry, true, true).await;
                }
            }
        });
    }
}

/// Naks a delivery for the next consumer; an untried one is recorded so that its next
/// delivery does not count this hand-out as an attempt. `leaving`: the consumer that had it
/// is gone, and its last pull may still be open on the server, which would take the event
/// back at once and lose it for an ack wait; so the nak asks for redelivery only after that
/// pull has expired.
pub async fn give_back(s: &Shared, seq: u64, entry: &Entry, untried: bool, leaving: bool) {
    if untried {
        s.attempts.add_untried(seq, entry.untried).await;
    }
    let delay = leaving.then(|| pull_expires(s.settings.ack_wait) + Duration::from_millis(200));
    if let Err(e) = entry.acker(&s.conn).ack_with(AckKind::Nak(delay)).await {
        tracing::debug!(seq, error = %e, "nak failed; JetStream redelivers after the ack wait");
    }
}

async fn feed(
    s: Arc<Shared>,
    topic: String,
    tx: mpsc::Sender<Delivery>,
    cancel: CancellationToken,
) {
    let consumer = loop {
        match s.durable(&topic).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot open the topic's durable consumer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    };
    loop {
        let permit = tokio::select! {
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
            _ = cancel.cancelled() => return,
        };
        let room = 1 + tx.capacity();
        drop(permit);
        if let Err(e) = pull(&s, &topic, &consumer, &tx, room, &cancel).await {
            if cancel.is_cancelled() {
                return;
            }
            tracing::warn!(topic, error = %e, "pulling events from JetStream failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// One pull of up to `room` events into `tx`.
async fn pull(
    s: &Shared,
    topic: &str,
    consumer: &PullConsumer,
    tx: &mpsc::Sender<Delivery>,
    room: usize,
    cancel: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let mut batch = consumer
        .batch()
        .max_messages(room)
        .expires(pull_expires(s.settings.ack_wait))
        .messages()
        .await?;
    loop {
        // Read the pull to its end even once cancelled: whatever the server hands to an open
        // pull is then given back here, instead of being lost in a dropped subscription until
        // the ack wait (which would also count a hand-out nobody saw).
        let Some(m) = batch.next().await else {
            return Ok(());
        };
        let m = m?;
        let Some(d) = delivery(s, topic, m).await else {
            continue;
        };
        if cancel.is_cancelled() {
            // Stopped while pulling: never handed out, so never tried.
            if let Some(entry) = s.inflight.take(d.seq) {
                give_back(s, d.seq, &entry, true, true).await;
            }
            continue;
        }
        // Room was reserved for `room` events and only this task sends.
        if let Err(e) = tx.try_send(d) {
            let d = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            if let Some(entry) = s.inflight.take(d.seq) {
                give_back(s, d.seq, &entry, true, false).await;
            }
        }
    }
}

/// Turns a JetStream message into a delivery and records it in flight; a payload that is not
/// an event (not written by a workmanager) is terminated and logged.
async fn delivery(s: &Shared, topic: &str, m: jetstream::Message) -> Option<Delivery> {
    let (seq, delivered) = match m.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        Err(e) => {
            tracing::warn!(topic, error = %e, "a JetStream delivery without metadata was skipped");
            return None;
        }
    };
    let reply = m.reply.clone()?;
    let event = match CloudEvent::from_flatbuffer(&m.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(topic, seq, error = %e, "a message on the topic's subject is not a workmanager event; terminated");
            let _ = m.ack_with(AckKind::Term).await;
            return None;
        }
    };
    let delivered = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
    let untried = if delivered > 1 {
        s.attempts.untried(seq).await
    } else {
        0
    };
    if delivered > 1 {
        s.metrics.add_redelivered(1);
    }
    let deliveries = delivered.saturating_sub(untried).max(1);
    s.inflight.insert(
        seq,
        Entry {
            reply,
            reported: deliveries,
            untried,
            discounted: untried > 0,
        },
    );
    Some(Delivery {
        seq,
        topic: topic.to_string(),
        event,
        deliveries,
        encoded: None,
    })
}
