//! The embedded bus: one SQLite file (`<data-dir>/bus.db`, WAL mode) and one writer thread.
//!
//! The writer owns the connection and every piece of routing state, so ordering is simple:
//! its thread takes whatever commands are queued (publishes, settles, completions,
//! subscriptions), runs them in one transaction (group commit: one fsync for many concurrent
//! publishers and workers), answers them, and then hands events to consumers. A lone write
//! that finds the writer idle is run by its caller instead, through the same code under the
//! writer's mutex (`queue`: the ordering rule and when it applies). The attempt
//! count of each hand-out (`deliveries`) is written with a group commit once it is 10 ms old
//! (not at all if the event was settled by then; in a small transaction of its own when the
//! writer is idle), so a redelivery after a crash shows every attempt but those of the last
//! ~10 ms before it.
//!
//! One job per module: `store` (every SQL statement), `writer` (the command loop and routing
//! state), `commit` (the group commit and its answers), `queue` (whether the writer thread or the caller applies a command), `flow` (which
//! consumer's bounded buffer gets the next event), `join` (what a group commit's join window
//! takes from the writer's channel), `overflow` (bounded backlogs and
//! dead-letter eviction). This file is the [`Bus`] face: argument checks,
//! publisher back-pressure, and the commands sent to the writer.
//!
//! Memory is bounded: each topic keeps at most [`SqliteBusOptions::memory_window`] undelivered
//! events in memory and leaves the rest on disk until there is room; each consumer has a buffer
//! of [`SqliteBusOptions::consumer_prefetch`] events; publishers wait when
//! [`SqliteBusOptions::max_queued_events`] are not yet committed.
//!
//! An event that reached its outcome stays in the store (`settled` = 1) for the replay window
//! ([`SqliteBusOptions::retention_events`], [`SqliteBusOptions::retention`]), which is what
//! [`Bus::replay`] and the SSE `Last-Event-ID` resume read.
//!
//! Events are stored as their `worker_api.fbs` FlatBuffer: it round-trips every attribute and
//! the extension order exactly (the JSON form would reorder extensions).

mod commit;
mod flow;
mod join;
mod overflow;
mod queue;
mod store;
mod wal;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use wm_shared::CloudEvent;

use super::{
    BoxFuture, Bus, BusError, BusMetrics, Consumer, ConsumerHooks, Delivery, Outcome, Published,
    ReplayPage, is_valid_topic,
};
pub(crate) use crate::sync::lock;
pub use queue::InlineCommit;
use queue::{Queue, Sender};
use store::Store;
use writer::Writer;

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
    /// Undelivered events per topic kept in memory; the rest wait on disk. Each holds its
    /// decoded event and its stored FlatBuffer, so the window is most of what a backlogged
    /// topic adds to the daemon's RSS.
    pub memory_window: usize,
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// How long a group commit waits to gather more writes when the previous one carried
    /// several (`BUS_COMMIT_DELAY_US`; zero: commit whatever is queued at once). A lone
    /// write never waits.
    pub commit_delay: std::time::Duration,
    /// With [`Durability::Fsync`]: how long a group commit whose events went to their
    /// consumers before the COMMIT keeps its transaction open for their completions (and
    /// whatever else arrives), so that a quick plugin's event is one fsync'd commit, not two
    /// (`BUS_JOIN_WINDOW_US`; zero: commit at once). It ends as soon as they are all in.
    pub join_window: std::time::Duration,
    /// Events a watcher (SSE) may lag behind before it skips.
    pub watch_capacity: usize,
    /// How long `open` waits for another process to let go of the store.
    pub lock_timeout: std::time::Duration,
    /// Most events one topic may hold in the store (undelivered or unsettled); what is
    /// published beyond it goes to `<topic>-dead` with reason `overflow` instead of growing the
    /// backlog without bound (publishers outrunning their workers). 0 = no limit. Dead-letter
    /// topics themselves are not limited.
    pub max_topic_backlog: u64,
    /// The replay window: an event that reached its outcome stays readable
    /// ([`Bus::replay`], SSE `Last-Event-ID`) while its topic holds at most this many events
    /// (`TOPIC_RETENTION_EVENTS`) ...
    pub retention_events: u64,
    /// ... and for at most this long (`TOPIC_RETENTION_SECONDS`). Either at 0: no window.
    pub retention: std::time::Duration,
    /// Most undelivered events a dead-letter topic keeps (`DEAD_LETTER_MAX_EVENTS`); beyond
    /// it the oldest are evicted and counted. Dead letters are never dropped for want of a
    /// consumer.
    pub dead_letter_max_events: u64,
    /// When a lone publish, settle or completion is committed on the calling thread instead
    /// of the writer thread's (`BUS_INLINE_COMMIT`; see [`InlineCommit`]).
    pub inline: InlineCommit,
    /// Whether `open` writes the WAL file with zeros up to one checkpoint cycle's size, so
    /// that commits overwrite allocated blocks instead of growing it (`BUS_WAL_PREALLOCATE`;
    /// see `wal.rs`).
    pub wal_preallocate: bool,
}

impl Default for SqliteBusOptions {
    fn default() -> Self {
        SqliteBusOptions {
            durability: Durability::Fsync,
            consumer_prefetch: 64,
            max_queued_events: 65_536,
            // Enough to keep 32 consumers' buffers (`consumer_prefetch`) full between two
            // reloads (a reload reads half a window in one query). 10,000 cost ~30 MiB of RSS
            // for one backlogged topic and no measurable throughput (docs/benchmarks.md, "RSS
            // with batches: the memory window").
            memory_window: 2_048,
            max_batch_events: 4_096,
            commit_delay: std::time::Duration::ZERO,
            join_window: std::time::Duration::from_micros(JOIN_WINDOW_DEFAULT_US),
            watch_capacity: 1_024,
            lock_timeout: std::time::Duration::from_secs(5),
            max_topic_backlog: 100_000,
            retention_events: 100_000,
            retention: std::time::Duration::from_secs(3_600),
            dead_letter_max_events: 100_000,
            inline: InlineCommit::Os,
            wal_preallocate: true,
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

/// One [`Bus::complete`]: settle `seq` and, in the same transaction, store its reply.
struct Complete {
    seq: u64,
    outcome: Outcome,
    reply_event: Option<(String, CloudEvent, Vec<u8>)>,
    answer: oneshot::Sender<Result<(), BusError>>,
}

/// `BUS_WAL_PREALLOCATE`: extends the WAL of the store at `path` for one checkpoint cycle.
/// A failure (a full disk) only costs speed, so it is logged and the bus opens as before.
fn preallocate_wal(conn: &Connection, path: &Path) {
    let started = std::time::Instant::now();
    let added = wal::cycle_bytes(conn)
        .map_err(std::io::Error::other)
        .and_then(|size| wal::preallocate(path, size));
    match added {
        Ok(0) => {}
        Ok(bytes) => tracing::debug!(
            wal = %wal::wal_path(path).display(),
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "bus WAL preallocated for one checkpoint cycle"
        ),
        Err(e) => tracing::warn!(
            wal = %wal::wal_path(path).display(),
            error = %e,
            "could not preallocate the bus WAL; commits will grow the file (slower fsyncs \
             until the first checkpoint). Free disk space, or set BUS_WAL_PREALLOCATE=0 to skip it"
        ),
    }
}

/// The default of [`SqliteBusOptions::join_window`] (`BUS_JOIN_WINDOW_US`), in microseconds:
/// see docs/operations.md for how it was chosen.
pub const JOIN_WINDOW_DEFAULT_US: u64 = 300;

/// The file name of the store inside the data directory.
pub const BUS_DB_FILE: &str = "bus.db";

/// The embedded durable bus. See the module docs.
pub struct SqliteBus {
    /// The writer: its command channel, and its state for lone writes applied inline.
    writer: Queue,
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
    Complete(Box<Complete>),
    Replay {
        topic: String,
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<ReplayPage, BusError>>,
    },
    Hold {
        worker: String,
        topic: Option<String>,
    },
    Ready,
    /// Nothing to apply: makes the writer thread look at its timers again (see
    /// [`Queue::write`]); not counted as pending.
    Wake,
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
        store::init(&conn).map_err(|source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                BusError::InUse { path: path.clone() }
            }
            _ => open_err(source),
        })?;
        if opts.wal_preallocate {
            preallocate_wal(&conn, &path);
        }

        let shared = Arc::new(Shared {
            watchers: Mutex::new(HashMap::new()),
            metrics: BusMetrics::default(),
            closed: AtomicBool::new(false),
            watch_capacity: opts.watch_capacity.max(1),
        });
        let inline = opts.inline.applies(opts.durability);
        let mut writer = Writer {
            store: Store::new(conn, opts.durability).map_err(open_err)?,
            topics: HashMap::new(),
            ready: false,
            shared: shared.clone(),
            opts: opts.clone(),
            held: HashMap::new(),
            retained: HashMap::new(),
            evicted: HashMap::new(),
            last_expiry: std::time::Instant::now(),
            deferred: Vec::new(),
            handed: HashMap::new(),
            last_batch: 0,
            last_batch_at: std::time::Instant::now(),
        };
        writer.recover().map_err(open_err)?;

        let (tx, rx) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let parked_long = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(writer));
        let thread = writer::Thread {
            state: state.clone(),
            pending: pending.clone(),
            parked_long: parked_long.clone(),
        };
        std::thread::Builder::new()
            .name("wm-bus-writer".into())
            .spawn(move || thread.run(rx))
            .map_err(BusError::Spawn)?;
        let sender = Sender::new(tx, pending.clone());
        let max_queued = u32::try_from(opts.max_queued_events.clamp(1, 1 << 24)).unwrap_or(1 << 24);
        Ok(Arc::new(SqliteBus {
            writer: Queue::new(sender, state, pending, parked_long, inline),
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

    /// `events`: each with its FlatBuffer encoding.
    async fn publish_inner(
        &self,
        topic: &str,
        events: Vec<(CloudEvent, Vec<u8>)>,
    ) -> Result<Vec<u64>, BusError> {
        if !is_valid_topic(topic) {
            return Err(BusError::InvalidTopic(topic.to_string()));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for (index, (e, _)) in events.iter().enumerate() {
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
        let (reply, rx) = oneshot::channel();
        self.shared.metrics.add_queued(n as i64);
        let sent = self.writer.write(Cmd::Append {
            topic: topic.to_string(),
            events,
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
        Box::pin(async move {
            let encoded = events
                .into_iter()
                .map(|e| {
                    let fb = e.to_flatbuffer();
                    (e, fb)
                })
                .collect();
            self.publish_inner(&topic, encoded).await
        })
    }

    fn publish_encoded(
        &self,
        topic: &str,
        events: Vec<(CloudEvent, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        let topic = topic.to_string();
        Box::pin(async move { self.publish_inner(&topic, events).await })
    }

    fn watch(&self, topic: &str) -> broadcast::Receiver<Arc<Published>> {
        let mut map = lock(&self.shared.watchers);
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
        let _ = self.writer.send(Cmd::Subscribe {
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
                cmd: self.writer.sender.clone(),
            }),
        )
    }

    fn settle(&self, seq: u64, outcome: Outcome) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.writer
                .write(Cmd::Settle {
                    seq,
                    outcome,
                    reply,
                })
                .map_err(|_| BusError::Closed)?;
            rx.await.unwrap_or(Err(BusError::Closed))
        })
    }

    fn complete(
        &self,
        seq: u64,
        outcome: Outcome,
        reply: Option<(String, CloudEvent)>,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        // Checked and queued now, so that completions commit in the order they are made.
        let queued = (|| {
            let reply_event = match reply {
                Some((topic, event)) => {
                    if !is_valid_topic(&topic) {
                        return Err(BusError::InvalidTopic(topic));
                    }
                    event.validate().map_err(|source| BusError::InvalidEvent {
                        topic: topic.clone(),
                        index: 0,
                        source,
                    })?;
                    let blob = event.to_flatbuffer();
                    Some((topic, event, blob))
                }
                None => None,
            };
            let (answer, rx) = oneshot::channel();
            self.writer
                .write(Cmd::Complete(Box::new(Complete {
                    seq,
                    outcome,
                    reply_event,
                    answer,
                })))
                .map_err(|_| BusError::Closed)?;
            Ok(rx)
        })();
        Box::pin(async move {
            match queued {
                Ok(rx) => rx.await.unwrap_or(Err(BusError::Closed)),
                Err(e) => Err(e),
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
            let (reply, rx) = oneshot::channel();
            self.writer
                .send(Cmd::Replay {
                    topic,
                    after,
                    limit: limit.max(1),
                    reply,
                })
                .map_err(|_| BusError::Closed)?;
            rx.await.unwrap_or(Err(BusError::Closed))
        })
    }

    fn hold(&self, worker: &str, topic: Option<&str>) {
        let _ = self.writer.send(Cmd::Hold {
            worker: worker.to_string(),
            topic: topic.map(str::to_string),
        });
    }

    fn release(&self, deliveries: Vec<Delivery>) {
        if !deliveries.is_empty() {
            let _ = self.writer.send(Cmd::Release { deliveries });
        }
    }

    fn set_ready(&self) {
        let _ = self.writer.send(Cmd::Ready);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            if self.writer.send(Cmd::Shutdown { reply }).is_ok() {
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
        let _ = self.writer.send(Cmd::Shutdown { reply });
    }
}

/// The sqlite side of a [`Consumer`].
struct Hooks {
    topic: String,
    id: u64,
    starved: Arc<AtomicBool>,
    cmd: Sender,
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
