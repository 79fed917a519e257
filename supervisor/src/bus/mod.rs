//! The bus: durable topics of CloudEvents with competing consumers and live watchers.
//!
//! [`Bus`] is the seam: the daemon only talks to `Arc<dyn Bus>`. [`SqliteBus`] is the embedded
//! implementation (one SQLite file, group commit); a NATS JetStream implementation can replace
//! it for more than one machine (a stream per topic, a durable pull consumer per worker, `settle`
//! = ack/term, `deliveries` = the message's delivery count).
//!
//! The contract every implementation keeps:
//! - `publish` returns only once the events are durable; each gets a sequence number.
//! - An event stays stored until [`Bus::settle`] records its outcome; unsettled events (also
//!   those left over from before a crash) are delivered again, with [`Delivery::deliveries`]
//!   counting attempts (at-least-once; a hand-out given back untried is not counted).
//! - Consumers of one topic compete: each event goes to one of them.
//! - Once [`Bus::set_ready`] was called, an event on a topic nobody consumes and no registered
//!   worker holds ([`Bus::hold`]) is settled [`Outcome::Dropped`] and counted; before that,
//!   events wait for their workers. Dead-letter topics are never dropped that way: they keep
//!   their newest `dead_letter_max_events`, evicting (and counting) the oldest.
//! - Every event stays readable for a replay window after its outcome ([`Bus::replay`]).
//! - Watchers ([`Bus::watch`], the SSE stream) see every published event whatever its outcome.

mod dead_letter;
pub mod jetstream;
mod metrics;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::{broadcast, mpsc};
use wm_shared::CloudEvent;

pub use dead_letter::{
    DEAD_LETTER_SUFFIX, DeadLetterReason, MAX_DEAD_LETTER_ERROR_LEN, dead_letter,
    dead_letter_event, dead_letter_topic,
};
pub use jetstream::{JetStreamBus, JetStreamBusOptions};
pub use metrics::BusMetrics;
pub use sqlite::{Durability, InlineCommit, JOIN_WINDOW_DEFAULT_US, SqliteBus, SqliteBusOptions};

/// True for a dead-letter topic (`<topic>-dead`).
pub fn is_dead_letter_topic(topic: &str) -> bool {
    topic.ends_with(DEAD_LETTER_SUFFIX)
}

/// A boxed future, so that [`Bus`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest topic name the bus takes. The REST API allows 200, which leaves room for the
/// `-dead` suffix of dead-letter topics.
pub const MAX_TOPIC_LEN: usize = 250;

/// One event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's sequence number; pass it to [`Bus::settle`].
    pub seq: u64,
    pub topic: String,
    pub event: CloudEvent,
    /// How many times the event was handed out, this time included (1 on the first delivery;
    /// more after a crash or after a consumer left without handling it).
    pub deliveries: u32,
    /// The event's `worker_api.fbs` FlatBuffer as the bus stored it, when it has it: the
    /// dispatcher sends it to the host as is (no second encoding) when it stamps nothing on.
    pub encoded: Option<Arc<Vec<u8>>>,
}

/// An event as watchers see it.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub topic: String,
    pub event: CloudEvent,
    /// The structured-mode JSON text, made once however many SSE streams send the event.
    json: OnceLock<String>,
}

impl Published {
    pub fn new(seq: u64, topic: String, event: CloudEvent) -> Published {
        Published {
            seq,
            topic,
            event,
            json: OnceLock::new(),
        }
    }

    /// The event as structured-mode JSON text (computed on first use, then shared).
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| self.event.to_json_value().to_string())
    }
}

/// A page of a topic's history, oldest first (see [`Bus::replay`]).
#[derive(Debug, Clone, Default)]
pub struct ReplayPage {
    /// Events of the topic with a sequence number above the one asked for, at most `limit`.
    pub events: Vec<Arc<Published>>,
    /// The highest sequence number of this topic that has left the replay window (0: none
    /// yet). A reader resuming after a smaller sequence number has missed events.
    pub evicted_through: u64,
}

/// How an event ended; recorded by [`Bus::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed; the reply (if any) was published.
    Replied,
    /// Published on `<topic>-dead`.
    DeadLettered { reason: String },
    /// Nobody could take it.
    Dropped { reason: String },
}

impl Outcome {
    /// The metric label of this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Replied => "replied",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Dropped { .. } => "dropped",
        }
    }
}

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "topic name '{0}' is invalid: use 1-{MAX_TOPIC_LEN} characters from A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidTopic(String),
    #[error("event {index} of the publish on topic '{topic}' is invalid: {source}")]
    InvalidEvent {
        topic: String,
        index: usize,
        #[source]
        source: wm_shared::cloudevent::CloudEventError,
    },
    #[error("cannot create the bus data directory {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the bus store {path} (check permissions and free space): {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the bus store {path} is in use by another process: stop the other workmanager or give this one its own data directory"
    )]
    InUse { path: std::path::PathBuf },
    #[error("the bus store failed to {step} (check the disk and the daemon log): {source}")]
    Store {
        step: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("cannot start the bus writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the bus is shut down and takes no more events")]
    Closed,
    #[error(
        "NATS JetStream failed to {step}: {message} (check NATS_URL, the NATS servers and the daemon log)"
    )]
    Nats { step: &'static str, message: String },
}

/// True for a topic name the bus takes: 1 to [`MAX_TOPIC_LEN`] of `[A-Za-z0-9._-]`.
pub fn is_valid_topic(topic: &str) -> bool {
    is_valid_topic_len(topic, MAX_TOPIC_LEN)
}

/// True for 1 to `max` characters of `[A-Za-z0-9._-]`.
pub fn is_valid_topic_len(topic: &str, max: usize) -> bool {
    !topic.is_empty()
        && topic.len() <= max
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The durable bus the daemon publishes to and consumes from.
pub trait Bus: Send + Sync + 'static {
    /// Durably appends `events` to `topic` (group commit) and returns their sequence numbers,
    /// in order, once committed.
    fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>>;

    /// [`Bus::publish`] of events the caller has already encoded: each with its
    /// `event.to_flatbuffer()` bytes (the REST API encodes them to check their size), so they
    /// are not encoded twice. The default forgets the bytes.
    fn publish_encoded(
        &self,
        topic: &str,
        events: Vec<(CloudEvent, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        self.publish(topic, events.into_iter().map(|(e, _)| e).collect())
    }

    /// Live feed of what is published on `topic` from now on (SSE). A receiver that lags
    /// behind skips events (`RecvError::Lagged`); it never slows publishers down.
    fn watch(&self, topic: &str) -> broadcast::Receiver<Arc<Published>>;

    /// A durable consumer on `topic`; consumers of one topic compete for its events.
    /// Unsettled events (also those from before a restart) are (re)delivered. Dropping the
    /// [`Consumer`] unsubscribes; events it had buffered but not returned go back to the topic.
    fn consume(&self, topic: &str, consumer: &str) -> Consumer;

    /// Records the outcome of event `seq`; the event leaves the store. Settling an event
    /// twice is not an error.
    fn settle(&self, seq: u64, outcome: Outcome) -> BoxFuture<'_, Result<(), BusError>>;

    /// Completes a delivery atomically: publishes `reply` (topic, event) if given and records
    /// the outcome of event `seq`, in one transaction. The reply is stored only if `seq` was
    /// still unsettled, so a completed delivery publishes its reply exactly once. The command
    /// is queued when this is called (not when the future is first polled), so completions
    /// sent one after the other commit in that order. The answer does not borrow the bus, so
    /// another task may await it.
    fn complete(
        &self,
        seq: u64,
        outcome: Outcome,
        reply: Option<(String, CloudEvent)>,
    ) -> BoxFuture<'static, Result<(), BusError>>;

    /// Up to `limit` events of `topic` with a sequence number above `after`, whatever their
    /// outcome, as long as they are inside the replay window (`TOPIC_RETENTION_*`).
    fn replay(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<ReplayPage, BusError>>;

    /// Worker `worker` is registered on `topic` (`Some`), or no longer exists (`None`). The
    /// events of a topic with a registered worker wait for it, whatever its status (stopped,
    /// ERROR, not recovered), instead of being dropped for want of a consumer.
    fn hold(&self, worker: &str, topic: Option<&str>);

    /// Gives deliveries that were received but not processed back to their topics, for the
    /// next consumer (JetStream: nak); e.g. the queue of a worker that stops. Deliveries that
    /// were settled meanwhile are ignored. `Delivery::deliveries` is stored as the event's
    /// attempt count: a caller that gives back an event it never tried passes one less than
    /// it received, so `deliveries` counts attempts, not hand-outs.
    fn release(&self, deliveries: Vec<Delivery>);

    /// A failed attempt of `delivery` is to be retried after `delay`: a bus that can
    /// redeliver later by itself (JetStream: `Nak` with the delay) takes the delivery back
    /// and returns true, and the event comes again after the delay, to this daemon or
    /// another, with `deliveries` one higher. False (the default, the embedded bus): the
    /// dispatcher waits and retries itself.
    fn retry_later(&self, delivery: &Delivery, delay: std::time::Duration) -> bool {
        let _ = (delivery, delay);
        false
    }

    /// Recovery is done: from now on, events on topics without a consumer are dropped (and
    /// counted) instead of waiting for their worker.
    fn set_ready(&self);

    /// Flushes what is queued and closes the store; later publishes fail with
    /// [`BusError::Closed`], consumers and watchers end.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Appends the bus metrics in the Prometheus text format.
    fn render_prometheus(&self, out: &mut String);
}

/// What a [`Consumer`] tells its bus implementation.
pub trait ConsumerHooks: Send + Sync + 'static {
    /// Called after each delivery [`Consumer::recv`] returns (room in the buffer again).
    fn received(&self);
    /// Called once when the consumer is dropped, with its receiving end: what is buffered
    /// there was never returned, so the implementation gives it back to the topic. (Handing
    /// over the receiver, rather than draining it here, lets the implementation drain it
    /// where no send into it can still be under way.)
    fn unsubscribed(&self, rx: mpsc::Receiver<Delivery>);
}

/// A subscription to a topic's events (see [`Bus::consume`]). The buffer between the bus and
/// the consumer is bounded: a slow consumer is sent less, and the rest stays in the store.
pub struct Consumer {
    topic: String,
    rx: mpsc::Receiver<Delivery>,
    hooks: Box<dyn ConsumerHooks>,
}

impl Consumer {
    /// A consumer fed through `rx`; for [`Bus`] implementations.
    pub fn new(topic: String, rx: mpsc::Receiver<Delivery>, hooks: Box<dyn ConsumerHooks>) -> Self {
        Consumer { topic, rx, hooks }
    }

    /// The topic this consumer takes events from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next event; `None` once the bus has shut down.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        self.hooks.received();
        Some(d)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let (_, closed) = mpsc::channel(1);
        let rx = std::mem::replace(&mut self.rx, closed);
        self.hooks.unsubscribed(rx);
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "orders.v1", "A_b-c.9", &"x".repeat(MAX_TOPIC_LEN)] {
            assert!(is_valid_topic(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ä", "a:b", &"x".repeat(MAX_TOPIC_LEN + 1)] {
            assert!(!is_valid_topic(bad), "{bad}");
        }
        assert!(!is_valid_topic_len("abc", 2));
    }
}
