//! The embedded bus: one SQLite file (`<data-dir>/bus.db`, WAL mode) and one writer thread.
//!
//! The writer thread owns the connection and every piece of routing state, so ordering is
//! simple: it takes whatever commands are queued (publishes, settles, subscriptions), runs them
//! in one transaction (group commit: one fsync for many concurrent publishers), answers the
//! publishers, and then hands events to consumers in a second, fsync-free transaction that
//! counts the delivery (`deliveries`) before the event leaves, so a redelivery after a crash
//! is always visible as such.
//!
//! Memory is bounded: each topic keeps at most [`SqliteBusOptions::memory_window`] undelivered
//! events in memory and leaves the rest on disk until there is room; each consumer has a buffer
//! of [`SqliteBusOptions::consumer_prefetch`] events; publishers wait when
//! [`SqliteBusOptions::max_queued_events`] are not yet committed.
//!
//! Events are stored as their `worker_api.fbs` FlatBuffer: it round-trips every attribute and
//! the extension order exactly (the JSON form would reorder extensions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use wm_shared::CloudEvent;

use super::dead_letter::{
    DEAD_LETTER_SUFFIX, DeadLetterReason, dead_letter_event, dead_letter_topic,
};
use super::{
    BoxFuture, Bus, BusError, BusMetrics, Consumer, ConsumerHooks, Delivery, Outcome, Published,
    is_valid_topic,
};
use crate::events::ErrorType;

/// How hard a publish is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync at every group commit (`PRAGMA synchronous=FULL`): survives a power cut.
    #[default]
    Fsync,
    /// Written to the OS before the acknowledgement, no fsync (`synchronous=NORMAL`):
    /// survives a crash or `kill -9` of the daemon, not a power cut.
    Os,
}

/// Settings of a [`SqliteBus`].
#[derive(Debug, Clone)]
pub struct SqliteBusOptions {
    pub durability: Durability,
    /// Events buffered per consumer (its channel capacity).
    pub consumer_prefetch: usize,
    /// Published events waiting for a commit before publishers have to wait.
    pub max_queued_events: usize,
    /// Undelivered events per topic kept in memory; the rest wait on disk.
    pub memory_window: usize,
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// Events a watcher (SSE) may lag behind before it skips.
    pub watch_capacity: usize,
    /// How long `open` waits for another process to let go of the store.
    pub lock_timeout: std::time::Duration,
    /// Most events one topic may hold in the store (undelivered or unsettled); what is
    /// published beyond it goes to `<topic>-dead` with reason `overflow` instead of growing the
    /// backlog without bound (publishers outrunning their workers). 0 = no limit. Dead-letter
    /// topics themselves are not limited.
    pub max_topic_backlog: u64,
}

impl Default for SqliteBusOptions {
    fn default() -> Self {
        SqliteBusOptions {
            durability: Durability::Fsync,
            consumer_prefetch: 64,
            max_queued_events: 65_536,
            memory_window: 10_000,
            max_batch_events: 4_096,
            watch_capacity: 1_024,
            lock_timeout: std::time::Duration::from_secs(5),
            max_topic_backlog: 100_000,
        }
    }
}

/// One publish as `process` collects it: topic, events with their encoded form, the
/// publisher's answer, and its place in the commit queue.
type Append = (
    String,
    Vec<(CloudEvent, Vec<u8>)>,
    oneshot::Sender<Result<Vec<u64>, BusError>>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// A publish after `route_overflow`: each event with the topic it is stored on.
type RoutedAppend = (
    Vec<(String, CloudEvent, Vec<u8>)>,
    oneshot::Sender<Result<Vec<u64>, BusError>>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// The file name of the store inside the data directory.
pub const BUS_DB_FILE: &str = "bus.db";

/// The embedded durable bus. See the module docs.
pub struct SqliteBus {
    cmd: mpsc::UnboundedSender<Cmd>,
    /// Back-pressure on publishers: one permit per event not yet committed.
    queue: Arc<Semaphore>,
    max_queued: u32,
    shared: Arc<Shared>,
    next_consumer: AtomicU64,
    prefetch: usize,
    path: PathBuf,
}

/// What the writer thread and the callers both reach.
struct Shared {
    watchers: Mutex<HashMap<String, broadcast::Sender<Arc<Published>>>>,
    metrics: BusMetrics,
    closed: AtomicBool,
    watch_capacity: usize,
}

enum Cmd {
    Append {
        topic: String,
        events: Vec<(CloudEvent, Vec<u8>)>,
        reply: oneshot::Sender<Result<Vec<u64>, BusError>>,
        _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    Settle {
        seq: u64,
        outcome: Outcome,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    Subscribe {
        topic: String,
        name: String,
        id: u64,
        tx: mpsc::Sender<Delivery>,
        starved: Arc<AtomicBool>,
    },
    Unsubscribe {
        topic: String,
        id: u64,
        rx: mpsc::Receiver<Delivery>,
    },
    Pump {
        topic: String,
    },
    Release {
        deliveries: Vec<Delivery>,
    },
    Ready,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl SqliteBus {
    /// Opens (or creates) `<data_dir>/bus.db` and starts the writer thread. Events left
    /// unsettled by an earlier run are queued for delivery again.
    pub fn open(data_dir: &Path, opts: SqliteBusOptions) -> Result<Arc<SqliteBus>, BusError> {
        std::fs::create_dir_all(data_dir).map_err(|source| BusError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(BUS_DB_FILE);
        let open_err = |source| BusError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(opts.lock_timeout).map_err(open_err)?;
        // EXCLUSIVE: this process keeps the file locked, so a second daemon on the same data
        // directory cannot deliver the same events twice. (The OS drops the lock on kill -9.)
        conn.execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE;
             PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic TEXT NOT NULL,
                 event BLOB NOT NULL,
                 published_ms INTEGER NOT NULL,
                 deliveries INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS events_by_topic ON events(topic, seq);",
        )
        .map_err(|source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                BusError::InUse { path: path.clone() }
            }
            _ => open_err(source),
        })?;

        let shared = Arc::new(Shared {
            watchers: Mutex::new(HashMap::new()),
            metrics: BusMetrics::default(),
            closed: AtomicBool::new(false),
            watch_capacity: opts.watch_capacity.max(1),
        });
        let mut writer = Writer {
            conn: Some(conn),
            topics: HashMap::new(),
            ready: false,
            shared: shared.clone(),
            sync_full: true,
            opts: opts.clone(),
        };
        writer.recover().map_err(open_err)?;

        let (cmd, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("wm-bus-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(BusError::Spawn)?;
        let max_queued = u32::try_from(opts.max_queued_events.clamp(1, 1 << 24)).unwrap_or(1 << 24);
        Ok(Arc::new(SqliteBus {
            cmd,
            queue: Arc::new(Semaphore::new(max_queued as usize)),
            max_queued,
            shared,
            next_consumer: AtomicU64::new(1),
            prefetch: opts.consumer_prefetch.max(1),
            path,
        }))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters of this bus.
    pub fn metrics(&self) -> &BusMetrics {
        &self.shared.metrics
    }

    async fn publish_inner(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> Result<Vec<u64>, BusError> {
        if !is_valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_string()));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for (index, e) in events.iter().enumerate() {
            e.validate().map_err(|source| BusError::InvalidEvent {
                topic: topic.to_string(),
                index,
                source,
            })?;
        }
        let n = events.len();
        // A batch larger than the whole queue takes all of it rather than waiting forever.
        let want = u32::try_from(n).unwrap_or(u32::MAX).min(self.max_queued);
        let permit = self
            .queue
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| BusError::Closed)?;
        let encoded = events
            .into_iter()
            .map(|e| {
                let fb = e.to_flatbuffer();
                (e, fb)
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.shared.metrics.add_queued(n as i64);
        let sent = self.cmd.send(Cmd::Append {
            topic: topic.to_string(),
            events: encoded,
            reply,
            _permit: Some(permit),
        });
        if sent.is_err() {
            self.shared.metrics.add_queued(-(n as i64));
            return Err(BusError::Closed);
        }
        rx.await.unwrap_or(Err(BusError::Closed))
    }
}

impl Bus for SqliteBus {
    fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        let topic = topic.to_string();
        Box::pin(async move { self.publish_inner(&topic, events).await })
    }

    fn watch(&self, topic: &str) -> broadcast::Receiver<Arc<Published>> {
        let mut map = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.shared.closed.load(Ordering::Acquire) {
            // A receiver whose sender is gone: the stream ends at once.
            return broadcast::channel(1).1;
        }
        // Forget the channels of watchers that have gone (a topic that is watched but never
        // published on is not swept by the writer).
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(self.shared.watch_capacity).0)
            .subscribe()
    }

    fn consume(&self, topic: &str, consumer: &str) -> Consumer {
        let (tx, rx) = mpsc::channel(self.prefetch);
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let starved = Arc::new(AtomicBool::new(false));
        // If the writer is gone, `tx` is dropped with the command and `recv` returns None.
        let _ = self.cmd.send(Cmd::Subscribe {
            topic: topic.to_string(),
            name: consumer.to_string(),
            id,
            tx,
            starved: starved.clone(),
        });
        Consumer::new(
            topic.to_string(),
            rx,
            Box::new(Hooks {
                topic: topic.to_string(),
                id,
                starved,
                cmd: self.cmd.clone(),
            }),
        )
    }

    fn settle(&self, seq: u64, outcome: Outcome) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.cmd
                .send(Cmd::Settle {
                    seq,
                    outcome,
                    reply,
                })
                .map_err(|_| BusError::Closed)?;
            rx.await.unwrap_or(Err(BusError::Closed))
        })
    }

    fn release(&self, deliveries: Vec<Delivery>) {
        if !deliveries.is_empty() {
            let _ = self.cmd.send(Cmd::Release { deliveries });
        }
    }

    fn set_ready(&self) {
        let _ = self.cmd.send(Cmd::Ready);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            if self.cmd.send(Cmd::Shutdown { reply }).is_ok() {
                let _ = rx.await;
            }
            self.queue.close();
        })
    }

    fn render_prometheus(&self, out: &mut String) {
        self.shared.metrics.render_prometheus(out);
    }
}

impl Drop for SqliteBus {
    fn drop(&mut self) {
        // Stops the writer even while consumers still hold a command sender.
        let (reply, _rx) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Shutdown { reply });
    }
}

/// The sqlite side of a [`Consumer`].
struct Hooks {
    topic: String,
    id: u64,
    starved: Arc<AtomicBool>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl ConsumerHooks for Hooks {
    fn received(&self) {
        // SYNC POINT with the `store(true)` in `Writer::place`: the writer sets the flag when
        // every buffer was full, then tries once more, so one of the two sides always sees the
        // other and no event is left waiting while a buffer has room.
        if self.starved.swap(false, Ordering::AcqRel) {
            let _ = self.cmd.send(Cmd::Pump {
                topic: self.topic.clone(),
            });
        }
    }

    fn unsubscribed(&self, rx: mpsc::Receiver<Delivery>) {
        let _ = self.cmd.send(Cmd::Unsubscribe {
            topic: self.topic.clone(),
            id: self.id,
            rx,
        });
    }
}

/// An undelivered event held in memory.
struct Entry {
    event: CloudEvent,
    deliveries: u32,
}

struct Slot {
    id: u64,
    name: String,
    tx: mpsc::Sender<Delivery>,
    starved: Arc<AtomicBool>,
}

#[derive(Default)]
struct Topic {
    /// Undelivered events in memory, by sequence number.
    pending: BTreeMap<u64, Entry>,
    /// Set while the store holds undelivered events of this topic that are not in `pending`:
    /// every stored, undelivered event with `seq >= spilled_from`.
    spilled_from: Option<u64>,
    consumers: Vec<Slot>,
    /// Round-robin position among `consumers`.
    next: usize,
    /// Events of this topic in the store: pending, spilled, or delivered and not yet settled
    /// (what `max_topic_backlog` limits).
    stored: u64,
}

struct Writer {
    /// `None` once shut down.
    conn: Option<Connection>,
    topics: HashMap<String, Topic>,
    ready: bool,
    shared: Arc<Shared>,
    /// The current `PRAGMA synchronous` is FULL.
    sync_full: bool,
    opts: SqliteBusOptions,
}

fn store_err(step: &'static str) -> impl Fn(rusqlite::Error) -> BusError {
    move |e| BusError::Store {
        step,
        source: Arc::new(e),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl Writer {
    fn conn(&mut self) -> Result<&mut Connection, rusqlite::Error> {
        self.conn.as_mut().ok_or_else(|| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                Some("the bus store is already closed".into()),
            )
        })
    }

    /// Loads what an earlier run left unsettled, up to the memory window per topic.
    fn recover(&mut self) -> Result<(), rusqlite::Error> {
        let conn = self.conn()?;
        let stored: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        let topics: Vec<(String, i64)> = {
            let mut st = conn.prepare("SELECT topic, count(*) FROM events GROUP BY topic")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        self.shared.metrics.set_stored(stored);
        for (t, n) in topics {
            let topic = self.topics.entry(t.clone()).or_default();
            topic.spilled_from = Some(0);
            topic.stored = u64::try_from(n).unwrap_or(0);
            self.reload(&t)?;
        }
        if stored > 0 {
            tracing::info!(
                events = stored,
                "bus: unsettled events from an earlier run will be delivered again"
            );
        }
        Ok(())
    }

    /// Refills `pending` of a spilled topic from the store.
    fn reload(&mut self, name: &str) -> Result<(), rusqlite::Error> {
        let window = self.opts.memory_window.max(1);
        let Some(topic) = self.topics.get(name) else {
            return Ok(());
        };
        let Some(from) = topic.spilled_from else {
            return Ok(());
        };
        let room = window.saturating_sub(topic.pending.len());
        if room == 0 {
            return Ok(());
        }
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT seq, event, deliveries FROM events WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows: Vec<(i64, Vec<u8>, i64)> = st
            .query_map(
                params![name, to_i64(from), i64::try_from(room).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        drop(st);
        let topic = self.topics.entry(name.to_string()).or_default();
        topic.spilled_from = if rows.len() < room {
            None
        } else {
            rows.last().map(|(s, _, _)| to_u64(*s) + 1)
        };
        for (seq, blob, deliveries) in rows {
            match CloudEvent::from_flatbuffer(&blob) {
                Ok(event) => {
                    topic.pending.insert(
                        to_u64(seq),
                        Entry {
                            event,
                            deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
                        },
                    );
                }
                // Only a damaged disk gets here; the row stays for an operator to inspect.
                Err(e) => {
                    tracing::error!(seq, topic = name, error = %e, "bus: stored event is corrupt and is skipped")
                }
            }
        }
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let max = self.opts.max_batch_events.max(1);
        while let Some(first) = rx.blocking_recv() {
            let mut weight = cmd_weight(&first);
            let mut batch = vec![first];
            while weight < max {
                match rx.try_recv() {
                    Ok(c) => {
                        weight += cmd_weight(&c);
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            if !self.process(batch) {
                break;
            }
        }
        // Whatever arrives after the shutdown is refused.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Append { reply, events, .. } => {
                    self.shared.metrics.add_queued(-(events.len() as i64));
                    let _ = reply.send(Err(BusError::Closed));
                }
                Cmd::Settle { reply, .. } => {
                    let _ = reply.send(Err(BusError::Closed));
                }
                Cmd::Shutdown { reply } => {
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
    }

    /// Runs one batch; false once shut down.
    fn process(&mut self, batch: Vec<Cmd>) -> bool {
        let mut appends = Vec::new();
        let mut settles = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut shutdown = Vec::new();
        let mut pump_all = false;
        for cmd in batch {
            match cmd {
                Cmd::Append {
                    topic,
                    events,
                    reply,
                    _permit,
                } => appends.push((topic, events, reply, _permit)),
                Cmd::Settle {
                    seq,
                    outcome,
                    reply,
                } => settles.push((seq, outcome, reply)),
                Cmd::Subscribe {
                    topic,
                    name,
                    id,
                    tx,
                    starved,
                } => {
                    tracing::debug!(topic, consumer = name, "bus: consumer subscribed");
                    self.topics
                        .entry(topic.clone())
                        .or_default()
                        .consumers
                        .push(Slot {
                            id,
                            name,
                            tx,
                            starved,
                        });
                    touched.insert(topic);
                }
                Cmd::Unsubscribe { topic, id, mut rx } => {
                    let t = self.topics.entry(topic.clone()).or_default();
                    if let Some(pos) = t.consumers.iter().position(|s| s.id == id) {
                        let slot = t.consumers.remove(pos);
                        tracing::debug!(topic, consumer = slot.name, "bus: consumer left");
                    }
                    // Handed out but never returned to the application: back in line. On
                    // this thread no permit into `rx` is outstanding, so this drains it all.
                    rx.close();
                    while let Ok(d) = rx.try_recv() {
                        t.pending.insert(
                            d.seq,
                            Entry {
                                event: d.event,
                                deliveries: d.deliveries,
                            },
                        );
                    }
                    touched.insert(topic);
                }
                Cmd::Pump { topic } => {
                    touched.insert(topic);
                }
                Cmd::Release { deliveries } => {
                    for d in deliveries {
                        match self.is_stored(d.seq) {
                            Ok(true) => {
                                touched.insert(d.topic.clone());
                                self.topics.entry(d.topic).or_default().pending.insert(
                                    d.seq,
                                    Entry {
                                        event: d.event,
                                        deliveries: d.deliveries,
                                    },
                                );
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::error!(seq = d.seq, error = %e, "bus: cannot release an event; it is delivered again after a restart")
                            }
                        }
                    }
                }
                Cmd::Ready => {
                    self.ready = true;
                    pump_all = true;
                }
                Cmd::Shutdown { reply } => shutdown.push(reply),
            }
        }

        if !appends.is_empty() || !settles.is_empty() {
            self.commit_writes(appends, settles, &mut touched);
        }
        if pump_all {
            touched.extend(self.topics.keys().cloned());
        }
        if !touched.is_empty() {
            self.pump(touched);
        }
        if !shutdown.is_empty() {
            self.shutdown();
            for reply in shutdown {
                let _ = reply.send(());
            }
            return false;
        }
        true
    }

    /// Whether event `seq` is still in the store (not settled).
    fn is_stored(&mut self, seq: u64) -> Result<bool, rusqlite::Error> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached("SELECT 1 FROM events WHERE seq = ?1")?;
        st.exists(params![to_i64(seq)])
    }

    fn set_sync(&mut self, full: bool) -> Result<(), rusqlite::Error> {
        if self.sync_full != full {
            let value = if full { "FULL" } else { "NORMAL" };
            self.conn()?.pragma_update(None, "synchronous", value)?;
            self.sync_full = full;
        }
        Ok(())
    }

    /// Phase 1: appends and settles in one transaction, then the answers.
    /// Gives every published event its target topic: its own, or `<topic>-dead` (reason
    /// `overflow`, the original event inside) once the topic holds `max_topic_backlog` events.
    /// Publishers still get one sequence number per event, acknowledged after the commit:
    /// nothing is dropped, and the backlog of a topic stays bounded.
    fn route_overflow(&self, appends: Vec<Append>) -> Vec<RoutedAppend> {
        let cap = self.opts.max_topic_backlog;
        let mut projected: HashMap<String, u64> = HashMap::new();
        appends
            .into_iter()
            .map(|(topic, events, reply, permit)| {
                let routed = events
                    .into_iter()
                    .map(|(event, blob)| {
                        let limited = cap > 0 && !topic.ends_with(DEAD_LETTER_SUFFIX);
                        let backlog = projected.entry(topic.clone()).or_insert_with(|| {
                            self.topics.get(&topic).map_or(0, |t| t.stored)
                        });
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
                        self.shared.metrics.add_overflowed(&topic, 1);
                        (dead_letter_topic(&topic), dead, blob)
                    })
                    .collect();
                (routed, reply, permit)
            })
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn commit_writes(
        &mut self,
        appends: Vec<Append>,
        settles: Vec<(u64, Outcome, oneshot::Sender<Result<(), BusError>>)>,
        touched: &mut HashSet<String>,
    ) {
        let appends = self.route_overflow(appends);
        let full = !appends.is_empty() && self.opts.durability == Durability::Fsync;
        let now = now_ms();
        let result = (|| -> Result<(Vec<Vec<u64>>, Vec<Option<String>>), BusError> {
            self.set_sync(full)
                .map_err(store_err("set the sync mode"))?;
            let conn = self.conn().map_err(store_err("begin a transaction"))?;
            let tx = conn
                .transaction()
                .map_err(store_err("begin a transaction"))?;
            let mut seqs = Vec::with_capacity(appends.len());
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO events (topic, event, published_ms) VALUES (?1, ?2, ?3) RETURNING seq",
                    )
                    .map_err(store_err("prepare an insert"))?;
                for (events, _, _) in &appends {
                    let mut s = Vec::with_capacity(events.len());
                    for (topic, _, blob) in events {
                        let seq: i64 = ins
                            .query_row(params![topic, blob, now], |r| r.get(0))
                            .map_err(store_err("append an event"))?;
                        s.push(to_u64(seq));
                    }
                    seqs.push(s);
                }
            }
            let mut settled = Vec::with_capacity(settles.len());
            {
                let mut del = tx
                    .prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING topic")
                    .map_err(store_err("prepare a delete"))?;
                for (seq, _, _) in &settles {
                    let topic: Option<String> = del
                        .query_row(params![to_i64(*seq)], |r| r.get(0))
                        .optional()
                        .map_err(store_err("settle an event"))?;
                    settled.push(topic);
                }
            }
            tx.commit().map_err(store_err("commit"))?;
            Ok((seqs, settled))
        })();

        let metrics = &self.shared.metrics;
        let queued: i64 = appends.iter().map(|a| a.0.len() as i64).sum();
        metrics.add_queued(-queued);
        let (seqs, settled) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "bus: a group commit failed; its publishes and settles are refused");
                let shared_err = |e: &BusError| match e {
                    BusError::Store { step, source } => BusError::Store {
                        step,
                        source: source.clone(),
                    },
                    _ => BusError::Closed,
                };
                for (_, reply, _) in appends {
                    let _ = reply.send(Err(shared_err(&e)));
                }
                for (_, _, reply) in settles {
                    let _ = reply.send(Err(shared_err(&e)));
                }
                return;
            }
        };
        metrics.add_commit();

        let window = self.opts.memory_window.max(1);
        for ((events, reply, _permit), seqs) in appends.into_iter().zip(seqs) {
            // Counters first, so that whoever sees the answer sees them too.
            for (topic, _, _) in &events {
                metrics.add_published(topic, 1);
            }
            metrics.add_stored(seqs.len() as i64);
            let _ = reply.send(Ok(seqs.clone()));
            for ((topic, event, _), seq) in events.into_iter().zip(seqs) {
                let watcher = {
                    let map = self
                        .shared
                        .watchers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    map.get(&topic).cloned()
                };
                if let Some(w) = &watcher {
                    let _ = w.send(Arc::new(Published {
                        seq,
                        topic: topic.clone(),
                        event: event.clone(),
                    }));
                }
                let t = self.topics.entry(topic.clone()).or_default();
                t.stored += 1;
                if t.spilled_from.is_none() {
                    if t.pending.len() >= window {
                        t.spilled_from = Some(seq);
                    } else {
                        t.pending.insert(
                            seq,
                            Entry {
                                event,
                                deliveries: 0,
                            },
                        );
                    }
                }
                if let Some(w) = watcher
                    && w.receiver_count() == 0
                {
                    let mut map = self
                        .shared
                        .watchers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if map.get(&topic).is_some_and(|w| w.receiver_count() == 0) {
                        map.remove(&topic);
                    }
                }
                touched.insert(topic);
            }
        }
        for ((seq, outcome, reply), topic) in settles.into_iter().zip(settled) {
            if let Some(topic) = topic {
                metrics.add_stored(-1);
                metrics.add_settled(outcome.label());
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.pending.remove(&seq);
                    t.stored = t.stored.saturating_sub(1);
                }
                tracing::trace!(seq, topic, outcome = outcome.label(), "bus: event settled");
            }
            let _ = reply.send(Ok(()));
        }
    }

    /// Phase 2: hands pending events to consumers (counting each delivery in the store first)
    /// and, once ready, drops the events of topics nobody consumes.
    fn pump(&mut self, mut topics: HashSet<String>) {
        // Bounded rounds so that one huge backlog cannot starve the command queue.
        for _ in 0..16 {
            if topics.is_empty() {
                return;
            }
            let mut again = HashSet::new();
            for name in &topics {
                let needs_reload = self.topics.get(name).is_some_and(|t| {
                    t.spilled_from.is_some()
                        && t.pending.len() < self.opts.memory_window.max(1) / 2 + 1
                });
                if needs_reload && let Err(e) = self.reload(name) {
                    tracing::error!(topic = name, error = %e, "bus: cannot read stored events");
                }
            }
            let mut plans = Vec::new();
            for name in &topics {
                if let Some(plan) = self.plan(name) {
                    if plan.more {
                        again.insert(name.clone());
                    }
                    plans.push(plan);
                }
            }
            if plans.iter().all(Plan::is_empty) {
                return;
            }
            if let Err(e) = self.record(&mut plans) {
                tracing::error!(error = %e, "bus: cannot record deliveries; they are retried on the next event");
                return;
            }
            self.apply(plans);
            topics = again;
        }
        // Still more to do: come back after the queued commands.
        for name in topics {
            if let Some(slot) = self.topics.get(&name).and_then(|t| t.consumers.first()) {
                slot.starved.store(true, Ordering::Release);
            }
        }
    }

    /// Picks consumers for pending events of topic `name` (without changing anything yet).
    fn plan(&mut self, name: &str) -> Option<Plan> {
        const MAX_PER_ROUND: usize = 4_096;
        let ready = self.ready;
        let t = self.topics.get_mut(name)?;
        t.consumers.retain(|s| !s.tx.is_closed());
        let mut plan = Plan {
            topic: name.to_string(),
            deliver: Vec::new(),
            drop: Vec::new(),
            drop_spilled_from: None,
            spilled_dropped: 0,
            more: false,
        };
        if t.consumers.is_empty() {
            if ready {
                plan.drop = t.pending.keys().copied().collect();
                plan.drop_spilled_from = t.spilled_from;
            }
            return Some(plan);
        }
        let candidates: Vec<u64> = t.pending.keys().take(MAX_PER_ROUND + 1).copied().collect();
        for seq in candidates {
            if plan.deliver.len() >= MAX_PER_ROUND {
                plan.more = true;
                break;
            }
            match place(t) {
                Some(permit) => plan.deliver.push((seq, permit)),
                None => break,
            }
        }
        if plan.deliver.len() == t.pending.len() && t.spilled_from.is_some() {
            plan.more = true;
        }
        Some(plan)
    }

    /// Counts the planned deliveries and deletes the planned drops, in one transaction
    /// without fsync (a lost count after a power cut only means one delivery too few).
    fn record(&mut self, plans: &mut [Plan]) -> Result<(), rusqlite::Error> {
        self.set_sync(false)?;
        let conn = self.conn()?;
        let tx = conn.transaction()?;
        {
            let mut upd =
                tx.prepare_cached("UPDATE events SET deliveries = deliveries + 1 WHERE seq = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
            let mut del_from =
                tx.prepare_cached("DELETE FROM events WHERE topic = ?1 AND seq >= ?2")?;
            for p in plans.iter_mut() {
                for (seq, _) in &p.deliver {
                    upd.execute(params![to_i64(*seq)])?;
                }
                for seq in &p.drop {
                    del.execute(params![to_i64(*seq)])?;
                }
                if let Some(from) = p.drop_spilled_from {
                    let n = del_from.execute(params![p.topic, to_i64(from)])?;
                    p.spilled_dropped = n as u64;
                }
            }
        }
        tx.commit()?;
        self.shared.metrics.add_commit();
        Ok(())
    }

    /// After [`Writer::record`] committed: sends the deliveries, forgets the drops.
    fn apply(&mut self, plans: Vec<Plan>) {
        let metrics = &self.shared.metrics;
        for p in plans {
            let Some(t) = self.topics.get_mut(&p.topic) else {
                continue;
            };
            let mut redelivered = 0;
            for (seq, permit) in p.deliver {
                let Some(entry) = t.pending.remove(&seq) else {
                    continue;
                };
                let deliveries = entry.deliveries.saturating_add(1);
                if deliveries > 1 {
                    redelivered += 1;
                }
                permit.send(Delivery {
                    seq,
                    topic: p.topic.clone(),
                    event: entry.event,
                    deliveries,
                });
            }
            metrics.add_redelivered(redelivered);
            let mut dropped = p.drop.len() as u64;
            for seq in &p.drop {
                t.pending.remove(seq);
            }
            if p.drop_spilled_from.is_some() {
                t.spilled_from = None;
                dropped += p.spilled_dropped;
            }
            if dropped > 0 {
                tracing::debug!(
                    topic = p.topic,
                    dropped,
                    "bus: events dropped, no worker consumes the topic"
                );
                metrics.add_stored(-(dropped as i64));
                metrics.add_dropped(&p.topic, dropped);
                t.stored = t.stored.saturating_sub(dropped);
            }
            if t.consumers.is_empty()
                && t.pending.is_empty()
                && t.spilled_from.is_none()
                && t.stored == 0
            {
                self.topics.remove(&p.topic);
            }
        }
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // Dropping the senders ends every consumer's `recv`.
        self.topics.clear();
        if let Some(conn) = self.conn.take()
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "bus: closing the store failed; the WAL is replayed on the next start");
        }
    }
}

/// A planned round for one topic.
struct Plan {
    topic: String,
    deliver: Vec<(u64, mpsc::OwnedPermit<Delivery>)>,
    drop: Vec<u64>,
    drop_spilled_from: Option<u64>,
    /// Rows deleted from `drop_spilled_from` on (known after the commit).
    spilled_dropped: u64,
    /// More events are waiting beyond this round.
    more: bool,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.deliver.is_empty() && self.drop.is_empty() && self.drop_spilled_from.is_none()
    }
}

/// Reserves room in the next consumer's buffer (round robin), or None when all are full.
fn place(t: &mut Topic) -> Option<mpsc::OwnedPermit<Delivery>> {
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

/// How much of the batch limit a command uses.
fn cmd_weight(c: &Cmd) -> usize {
    match c {
        Cmd::Append { events, .. } => events.len().max(1),
        _ => 1,
    }
}
