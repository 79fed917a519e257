//! The bus on NATS JetStream: several daemons, one set of topics (docs/cluster.md).
//!
//! - Every topic is a subject of one stream (`<P>_EVENTS`, file storage, `NATS_STREAM_REPLICAS`
//!   replicas, limits retention: `TOPIC_RETENTION_EVENTS` per subject and
//!   `TOPIC_RETENTION_SECONDS`), so a stream sequence orders and names every event of the
//!   deployment: it is `Delivery::seq`, the SSE `id:` and what `Last-Event-ID` / `?after=` resume
//!   from.
//! - Each topic has one durable pull consumer shared by every consumer of the topic on every
//!   daemon (`feeder.rs`): daemons are competing consumers, and an event never reaches the
//!   "wrong" daemon. Deliveries are pulled only as the local buffer has room.
//! - A publish is acknowledged after JetStream's ack; `Nats-Msg-Id` is a hash of topic,
//!   source and id, so a retried publish (or a reply published again after a crash between
//!   publish and ack) is stored once within `NATS_DUPLICATE_WINDOW_SECONDS`.
//! - `settle`/`complete` ack (replied) or terminate (dead-lettered, dropped) after the reply is
//!   stored; `release` naks; in-flight deliveries get `AckProgress` every third of the ack wait
//!   (`inflight.rs`), so long calls keep their event and a dead daemon's events go to the others
//!   after `NATS_ACK_WAIT_SECONDS`.
//! - Watchers share one ordered consumer over every topic (`watch.rs`); replay is an ephemeral
//!   consumer from a start sequence.

mod attempts;
mod feeder;
mod inflight;
pub mod naming;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wm_shared::CloudEvent;

use super::{
    BoxFuture, Bus, BusError, BusMetrics, Consumer, Delivery, Outcome, Published, ReplayPage,
    is_dead_letter_topic, is_valid_topic,
};
use crate::cluster::{NatsConnection, NatsSettings};
use crate::sync::lock;
use attempts::Attempts;
use inflight::InFlight;
use naming::Names;

/// Options of the JetStream bus besides the connection settings.
#[derive(Debug, Clone)]
pub struct JetStreamBusOptions {
    /// `TOPIC_RETENTION_EVENTS`: events kept per topic (0: no count limit).
    pub retention_events: u64,
    /// `TOPIC_RETENTION_SECONDS`: how long events are kept (zero: no age limit).
    pub retention: Duration,
    /// Deliveries buffered per local consumer (pulled only as there is room).
    pub consumer_prefetch: usize,
    /// Capacity of each watcher channel.
    pub watch_capacity: usize,
}

impl Default for JetStreamBusOptions {
    fn default() -> Self {
        JetStreamBusOptions {
            retention_events: 100_000,
            retention: Duration::from_secs(3600),
            // Small: what one daemon buffers, the others cannot take (the dispatcher asks for
            // events only as its worker has a free lane).
            consumer_prefetch: 4,
            watch_capacity: 1_024,
        }
    }
}

/// State shared by the bus, its feeders and its background tasks.
pub(crate) struct Shared {
    conn: NatsConnection,
    names: Names,
    settings: NatsSettings,
    opts: JetStreamBusOptions,
    stream: stream::Stream,
    attempts: Attempts,
    inflight: InFlight,
    metrics: BusMetrics,
    ready: AtomicBool,
    closed: AtomicBool,
    cancel: CancellationToken,
    /// Topics with a registered worker on this daemon (worker → topic).
    holds: std::sync::Mutex<HashMap<String, String>>,
    /// Topics whose durable consumer is known to exist.
    durables: std::sync::Mutex<HashSet<String>>,
    /// Topics found without a durable consumer, and when: asked again after a second at the
    /// earliest, so that a topic nobody consumes (daemon events, audit) costs one JetStream
    /// request a second, not one per publish.
    no_durable: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Live consumers per topic on this daemon.
    consuming: std::sync::Mutex<HashMap<String, usize>>,
    watchers: std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<Published>>>>,
    /// Completions, in call order (see [`Bus::complete`]).
    completions: mpsc::UnboundedSender<Completion>,
    /// Retries handed to JetStream as `Nak` with a delay.
    retries_delayed: std::sync::atomic::AtomicU64,
}

struct Completion {
    seq: u64,
    entry: inflight::Entry,
    outcome: Outcome,
    reply: Option<(String, CloudEvent)>,
    done: oneshot::Sender<Result<(), BusError>>,
}

/// The JetStream bus; see the module documentation.
pub struct JetStreamBus {
    shared: Arc<Shared>,
}

fn nats_err(step: &'static str, e: impl std::fmt::Display) -> BusError {
    BusError::Nats {
        step,
        message: e.to_string(),
    }
}

/// `Nats-Msg-Id` of an event on a topic: the CloudEvent identity (source + id) per topic.
pub fn message_id(topic: &str, event: &CloudEvent) -> String {
    let mut h = Sha256::new();
    for part in [topic, &event.source, &event.id] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl JetStreamBus {
    /// Creates (or updates) the stream and the attempts bucket and starts the background tasks.
    pub async fn open(
        conn: NatsConnection,
        settings: NatsSettings,
        opts: JetStreamBusOptions,
    ) -> Result<Arc<JetStreamBus>, BusError> {
        let names = Names::new(&settings.prefix);
        let config = stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.all_topics()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            max_age: opts.retention,
            max_messages_per_subject: match opts.retention_events {
                0 => -1,
                n => i64::try_from(n).unwrap_or(i64::MAX),
            },
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            ..Default::default()
        };
        let js = &conn.jetstream;
        let stream = match js.get_stream(&names.stream).await {
            Ok(_) => {
                js.update_stream(&config)
                    .await
                    .map_err(|e| nats_err("update the events stream", e))?;
                js.get_stream(&names.stream)
                    .await
                    .map_err(|e| nats_err("open the events stream", e))?
            }
            Err(_) => js
                .get_or_create_stream(config)
                .await
                .map_err(|e| nats_err("create the events stream", e))?,
        };
        let kv = open_kv(
            js,
            &names.attempts_bucket,
            settings.replicas,
            Duration::from_secs(86_400),
        )
        .await
        .map_err(|e| nats_err("create the attempts bucket", e))?;
        let (completions, completion_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            conn,
            names,
            settings,
            opts,
            stream,
            attempts: Attempts::new(kv),
            inflight: InFlight::default(),
            metrics: BusMetrics::default(),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            holds: std::sync::Mutex::default(),
            durables: std::sync::Mutex::default(),
            no_durable: std::sync::Mutex::default(),
            consuming: std::sync::Mutex::default(),
            retries_delayed: std::sync::atomic::AtomicU64::new(0),
            watchers: std::sync::Mutex::default(),
            completions,
        });
        tokio::spawn(completer(shared.clone(), completion_rx));
        tokio::spawn(inflight::keep_alive(shared.clone()));
        watch::start(shared.clone())
            .await
            .map_err(|e| nats_err("start the watch consumer", e))?;
        Ok(Arc::new(JetStreamBus { shared }))
    }

    /// The counters of this bus.
    pub fn metrics(&self) -> &BusMetrics {
        &self.shared.metrics
    }

    /// True while connected to NATS.
    pub fn is_connected(&self) -> bool {
        self.shared.conn.is_connected()
    }

    async fn publish_inner(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> Result<Vec<u64>, BusError> {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if !is_valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_string()));
        }
        for (index, e) in events.iter().enumerate() {
            e.validate().map_err(|source| BusError::InvalidEvent {
                topic: topic.to_string(),
                index,
                source,
            })?;
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Refused at once while disconnected: the client would otherwise buffer the publish,
        // answer "failed" after its ack timeout, and still store the event on reconnect.
        if !s.conn.is_connected() {
            return Err(nats_err(
                "publish",
                "not connected to NATS (reconnecting); retry with the same event id, duplicates are dropped",
            ));
        }
        let seqs = publish_events(s, topic, &events).await?;
        s.metrics.add_published(topic, seqs.len() as u64);
        // Once ready, an event on a topic nobody will ever consume is dropped (counted); it
        // stays readable for the replay window, and a durable created later starts after it.
        if s.ready.load(Ordering::Acquire) && !is_dead_letter_topic(topic) && !s.wanted(topic).await
        {
            s.metrics.add_dropped(topic, seqs.len() as u64);
        }
        Ok(seqs)
    }
}

/// Creates (if missing) and opens a KV bucket.
///
/// `create_key_value` of async-nats 0.51 first reads the account info, whose reply from
/// nats-server 2.9 (Debian 12's) it cannot parse; so the bucket's stream is created here with
/// the configuration the client would give it (the KV conventions of ADR-8), and opened with
/// `get_key_value`, which works on 2.9.
pub(crate) async fn open_kv(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, async_nats::Error> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await?;
    Ok(js.get_key_value(bucket).await?)
}

/// Publishes in order, pipelined: every message is sent before the first ack is awaited.
async fn publish_events(
    s: &Shared,
    topic: &str,
    events: &[CloudEvent],
) -> Result<Vec<u64>, BusError> {
    let acks = send_events(s, topic, events).await?;
    let mut seqs = Vec::with_capacity(acks.len());
    for ack in acks {
        let ack = ack
            .await
            .map_err(|e| nats_err("get JetStream's ack of a publish", e))?;
        seqs.push(ack.sequence);
    }
    Ok(seqs)
}

/// Sends publishes in order and returns their pending acks.
async fn send_events(
    s: &Shared,
    topic: &str,
    events: &[CloudEvent],
) -> Result<Vec<jetstream::context::PublishAckFuture>, BusError> {
    let subject = s.names.subject(topic);
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id(topic, e).as_str());
        let ack = s
            .conn
            .jetstream
            .publish_with_headers(subject.clone(), headers, e.to_flatbuffer().into())
            .await
            .map_err(|e| nats_err("send a publish", e))?;
        acks.push(ack);
    }
    Ok(acks)
}

impl Shared {
    /// True if some consumer will take `topic`'s events: a local consumer or hold, or a
    /// durable consumer (any daemon's) in JetStream.
    async fn wanted(&self, topic: &str) -> bool {
        if lock(&self.consuming).get(topic).is_some_and(|n| *n > 0)
            || lock(&self.holds).values().any(|t| t == topic)
            || lock(&self.durables).contains(topic)
        {
            return true;
        }
        if lock(&self.no_durable)
            .get(topic)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        match self.stream.consumer_info(self.names.durable(topic)).await {
            Ok(_) => {
                lock(&self.durables).insert(topic.to_string());
                lock(&self.no_durable).remove(topic);
                true
            }
            Err(_) => {
                let mut map = lock(&self.no_durable);
                // Bounded: forget entries that are stale anyway.
                if map.len() > 10_000 {
                    map.retain(|_, at| at.elapsed() < Duration::from_secs(1));
                }
                map.insert(topic.to_string(), std::time::Instant::now());
                false
            }
        }
    }

    /// The durable consumer of `topic`, created if missing. Created before recovery is done,
    /// it starts at the oldest stored event (events wait for their workers); created after,
    /// at new events (older ones were dropped for want of a consumer).
    pub(crate) async fn durable(&self, topic: &str) -> Result<consumer::PullConsumer, BusError> {
        let name = self.names.durable(topic);
        let deliver_policy = if self.ready.load(Ordering::Acquire) {
            consumer::DeliverPolicy::New
        } else {
            consumer::DeliverPolicy::All
        };
        let c = self
            .stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("workmanager workers of topic {topic}")),
                    filter_subject: self.names.subject(topic),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    // Dead letters are the daemon's decision (RETRY_ATTEMPTS), never the
                    // server's: its MAX_DELIVERIES advisory is not durable.
                    max_deliver: -1,
                    max_ack_pending: 20_000,
                    deliver_policy,
                    num_replicas: self.settings.replicas,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats_err("create the topic's durable consumer", e))?;
        lock(&self.durables).insert(topic.to_string());
        lock(&self.no_durable).remove(topic);
        Ok(c)
    }

    async fn ack(
        &self,
        seq: u64,
        entry: &inflight::Entry,
        outcome: &Outcome,
    ) -> Result<(), BusError> {
        let kind = match outcome {
            Outcome::Replied => jetstream::AckKind::Ack,
            Outcome::DeadLettered { .. } | Outcome::Dropped { .. } => jetstream::AckKind::Term,
        };
        entry
            .acker(&self.conn)
            .double_ack_with(kind)
            .await
            .map_err(|e| nats_err("acknowledge a delivery", e))?;
        if entry.discounted {
            self.attempts.forget(seq).await;
        }
        self.metrics.add_settled(outcome.label());
        Ok(())
    }
}

/// Sends completions' replies one after the other, so replies are published in call order;
/// waiting for JetStream's ack of each reply and then acknowledging the input happen
/// concurrently (one round trip each would otherwise cap a daemon at ~1.5k events/s).
async fn completer(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    while let Some(c) = rx.recv().await {
        let sent = match &c.reply {
            None => Ok(None),
            Some((topic, event)) => send_events(&s, topic, std::slice::from_ref(event))
                .await
                .map(|acks| Some((topic.clone(), acks))),
        };
        let s = s.clone();
        tokio::spawn(async move {
            let result = async {
                if let Some((topic, acks)) = sent? {
                    for ack in acks {
                        ack.await
                            .map_err(|e| nats_err("get JetStream's ack of a reply", e))?;
                    }
                    s.metrics.add_published(&topic, 1);
                }
                s.ack(c.seq, &c.entry, &c.outcome).await
            }
            .await;
            if result.is_err() {
                // Not settled: keep it in flight so `release` (the dispatcher's answer to a
                // failed completion) finds it; a reply that was stored is deduplicated when
                // redone.
                s.inflight.put_back(c.seq, c.entry);
            }
            let _ = c.done.send(result);
        });
    }
}

impl Bus for JetStreamBus {
    fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        let topic = topic.to_string();
        Box::pin(async move { self.publish_inner(&topic, events).await })
    }

    fn watch(&self, topic: &str) -> broadcast::Receiver<Arc<Published>> {
        watch::subscribe(&self.shared, topic)
    }

    fn consume(&self, topic: &str, _consumer: &str) -> Consumer {
        feeder::consume(self.shared.clone(), topic)
    }

    fn settle(&self, seq: u64, outcome: Outcome) -> BoxFuture<'_, Result<(), BusError>> {
        let entry = self.shared.inflight.take(seq);
        Box::pin(async move {
            match entry {
                // Settled already, or not handed out here: nothing to do (settling twice is
                // not an error).
                None => Ok(()),
                Some(entry) => {
                    let r = self.shared.ack(seq, &entry, &outcome).await;
                    if r.is_err() {
                        self.shared.inflight.put_back(seq, entry);
                    }
                    r
                }
            }
        })
    }

    fn complete(
        &self,
        seq: u64,
        outcome: Outcome,
        reply: Option<(String, CloudEvent)>,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        // Taken now, so a second completion of the same delivery publishes nothing.
        let queued = match self.shared.inflight.take(seq) {
            None => Ok(None),
            Some(entry) => {
                let (done, rx) = oneshot::channel();
                self.shared
                    .completions
                    .send(Completion {
                        seq,
                        entry,
                        outcome,
                        reply,
                        done,
                    })
                    .map(|()| Some(rx))
                    .map_err(|_| BusError::Closed)
            }
        };
        Box::pin(async move {
            match queued? {
                None => Ok(()),
                Some(rx) => rx.await.unwrap_or(Err(BusError::Closed)),
            }
        })
    }

    fn replay(
        &self,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<ReplayPage, BusError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            if !is_valid_topic(&topic) {
                return Err(BusError::InvalidTopic(topic));
            }
            watch::replay(&self.shared, &topic, after, limit.max(1)).await
        })
    }

    fn hold(&self, worker: &str, topic: Option<&str>) {
        let s = &self.shared;
        match topic {
            Some(t) => {
                lock(&s.holds).insert(worker.to_string(), t.to_string());
                // The durable is created now, so the topic's events wait for the worker
                // whether or not it is running.
                let (s, t) = (s.clone(), t.to_string());
                tokio::spawn(async move {
                    if let Err(e) = s.durable(&t).await {
                        tracing::warn!(topic = %t, error = %e, "cannot create the durable consumer of a registered worker's topic; retried when the worker starts");
                    }
                });
            }
            None => {
                lock(&s.holds).remove(worker);
            }
        }
    }

    fn release(&self, deliveries: Vec<Delivery>) {
        let s = self.shared.clone();
        let taken: Vec<(Delivery, inflight::Entry)> = deliveries
            .into_iter()
            .filter_map(|d| s.inflight.take(d.seq).map(|e| (d, e)))
            .collect();
        if taken.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (d, entry) in taken {
                feeder::give_back(&s, d.seq, &entry, d.deliveries < entry.reported, false).await;
            }
        });
    }

    fn retry_later(&self, delivery: &Delivery, delay: Duration) -> bool {
        let s = self.shared.clone();
        // Not in flight any more (given back at close): it is not ours to retry, and JetStream
        // delivers it again anyway.
        let Some(entry) = s.inflight.take(delivery.seq) else {
            return true;
        };
        s.retries_delayed.fetch_add(1, Ordering::Relaxed);
        let seq = delivery.seq;
        tokio::spawn(async move {
            // Tried, so no untried give-back is recorded: the next delivery's count is one
            // more attempt, which is what the dispatcher's retry budget counts.
            if let Err(e) = entry
                .acker(&s.conn)
                .ack_with(jetstream::AckKind::Nak(Some(delay)))
                .await
            {
                tracing::debug!(seq, error = %e, "nak with delay failed; JetStream redelivers after the ack wait");
            }
        });
        true
    }

    fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::Release);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            s.closed.store(true, Ordering::Release);
            s.cancel.cancel();
            // Give what is still in flight back at once (as attempted: it was handed out),
            // rather than let it wait for the ack wait: another daemon takes it now.
            let mut left = s.inflight.drain();
            left.sort_by_key(|(seq, _)| *seq);
            for (seq, entry) in left {
                feeder::give_back(s, seq, &entry, false, true).await;
            }
            lock(&s.watchers).clear();
            if let Err(e) = s.conn.client.flush().await {
                tracing::warn!(error = %e, "flushing the NATS connection at close failed");
            }
        })
    }

    fn render_prometheus(&self, out: &mut String) {
        self.shared.metrics.render_prometheus(out);
        out.push_str("# HELP workmanager_nats_connected 1 while the daemon is connected to NATS.\n# TYPE workmanager_nats_connected gauge\n");
        out.push_str(&format!(
            "workmanager_nats_connected {}\n",
            u8::from(self.shared.conn.is_connected())
        ));
        out.push_str("# HELP workmanager_bus_retries_delayed_total Failed calls whose retry was handed to JetStream as a Nak with the backoff delay.\n# TYPE workmanager_bus_retries_delayed_total counter\n");
        out.push_str(&format!(
            "workmanager_bus_retries_delayed_total {}\n",
            self.shared.retries_delayed.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP workmanager_bus_in_flight Deliveries handed out by this daemon and not settled.\n# TYPE workmanager_bus_in_flight gauge\n");
        out.push_str(&format!(
            "workmanager_bus_in_flight {}\n",
            self.shared.inflight.count()
        ));
    }
}

/// For tests: the stream's state as JetStream reports it (messages, first and last sequence).
impl JetStreamBus {
    pub async fn stream_state(&self) -> Result<(u64, u64, u64), BusError> {
        let info = self
            .shared
            .stream
            .get_info()
            .await
            .map_err(|e| nats_err("read the stream info", e))?;
        Ok((
            info.state.messages,
            info.state.first_sequence,
            info.state.last_sequence,
        ))
    }

    /// Messages the topic's durable consumer has not had acknowledged (pending + in flight).
    pub async fn unfinished(&self, topic: &str) -> Result<u64, BusError> {
        let mut c = self
            .shared
            .stream
            .get_consumer::<consumer::pull::Config>(&self.shared.names.durable(topic))
            .await
            .map_err(|e| nats_err("open the topic's durable consumer", e))?;
        let info = c
            .info()
            .await
            .map_err(|e| nats_err("read the consumer info", e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}
