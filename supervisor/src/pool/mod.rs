//! The pool of host-runner processes.
//!
//! A *slot* is a place for workers: one shared slot per engine (or more, by setting) and one
//! dedicated slot per worker with `isolation: dedicated`. Each slot runs one task that keeps a
//! host process alive for it: spawn, load every worker of the slot, serve, and when the process
//! dies, publish a [`DeathReport`], count crashes, quarantine crash-looping workers, back off
//! and start again. Callers reach the current host of a worker through [`Pool::host_for`].
//!
//! **Invariant:** the pool never decides what happens to a message; it reports who was on the
//! faulting thread ([`DeathReport::verdict`]) and the dispatcher applies the retry rules.
//!
//! One job per module: this file places workers on slots and loads them; `slot_task` is each
//! slot's task; `handle` is a live host as callers see it; `death` says what a death means;
//! `respawn` when to start again; `host_metrics` the per-host `/metrics` series.

mod death;
pub mod guard;
mod handle;
mod host_metrics;
pub mod launch;
pub mod layers;
mod respawn;
mod slot_task;
pub mod spawn;
pub mod standby;
pub mod stderr;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wm_shared::protocol::link::{HostLink, LinkError};
use wm_shared::protocol::{EngineKind, GatewayCall, LoadWorker, Message, UnloadWorker};
use wm_shared::ring::CrashRecord;

use crate::events::Events;
use crate::runtime::{HostInfo, Isolation, WorkerSpec};
use crate::worker_limits::WorkerLimits;
pub use death::{DeathReport, Verdict};
use guard::{Guard, HostLimits, Rated, Violations};
pub use handle::{CallOutcome, HostHandle};
pub use host_metrics::render_prometheus;
pub use respawn::{backoff, next_failures, respawn_delay};
pub use spawn::{ExitStatus, LinkReader, SpawnConfig, SpawnError, Spawner, signal_name};

/// Pool settings beyond how to spawn.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub spawn: SpawnConfig,
    /// Shared hosts per engine; workers are placed on the least loaded one.
    pub shared_hosts_per_engine: usize,
    /// First respawn delay; doubles per consecutive failure up to `respawn_backoff_max`.
    pub respawn_backoff_base: Duration,
    pub respawn_backoff_max: Duration,
    /// A host that stayed up this long resets the backoff.
    pub stable_after: Duration,
    /// `crash_loop_count` crashes of one worker within `crash_loop_window` quarantine it.
    pub crash_loop_count: usize,
    pub crash_loop_window: Duration,
    /// How long a load may take.
    pub load_timeout: Duration,
    /// How often host stats (RSS) are sampled.
    pub stats_interval: Duration,
    /// What hosts may send unasked, and how many hosts may run.
    pub limits: HostLimits,
    /// `HOST_STANDBY`: keep one warm idle host per engine for respawns to adopt.
    pub standby: bool,
}

/// Room in the channel of [`PoolEvent`]s; a full channel makes the hosts' frame loops wait
/// (backpressure into their rings), never the daemon grow.
pub const POOL_EVENTS_CAPACITY: usize = 256;

/// Things the pool tells the runtime about, outside any call.
#[derive(Debug)]
pub enum PoolEvent {
    /// The worker crashed its host too often: it is no longer loaded; its queue is kept.
    Quarantined { worker_id: String, reason: String },
    /// Reloading a worker into a respawned host failed.
    ReloadFailed { worker_id: String, error: String },
    /// A gateway call of a worker placed on `host`, within its rate. `permit` holds one of the
    /// host's `HOST_GATEWAY_CALLS_IN_FLIGHT` places until the reply is sent.
    GatewayCall {
        host: Arc<HostHandle>,
        call: GatewayCall,
        permit: OwnedSemaphorePermit,
    },
}

use crate::sync::lock;

struct Slot {
    id: String,
    engine: EngineKind,
    dedicated: bool,
    /// The limits its hosts are spawned with (a worker's own; empty: the engine's settings).
    limits: WorkerLimits,
    workers: Mutex<HashMap<String, WorkerSpec>>,
    current: watch::Sender<Option<Arc<HostHandle>>>,
    restarts: AtomicU64,
    crashes: AtomicU64,
    rss: AtomicU64,
    violations: Arc<Violations>,
    /// Workers being unloaded: their frames are still their host's own.
    leaving: Mutex<HashSet<String>>,
    closed: CancellationToken,
}

impl Slot {
    /// Whether frames naming `worker_id` may come from this slot's host.
    fn carries(&self, worker_id: &str) -> bool {
        lock(&self.workers).contains_key(worker_id) || lock(&self.leaving).contains(worker_id)
    }
}

/// The pool.
pub struct Pool {
    config: PoolConfig,
    spawner: Spawner,
    slots: Mutex<Vec<Arc<Slot>>>,
    placement: Mutex<HashMap<String, Arc<Slot>>>,
    crash_times: Mutex<HashMap<String, VecDeque<Instant>>>,
    next_slot: AtomicU64,
    events: Arc<Events>,
    notify: mpsc::Sender<PoolEvent>,
    guard: Guard,
    standbys: Arc<standby::Standbys>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Why a worker could not be placed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no host could be started: {0}")]
    Spawn(#[from] SpawnError),
    #[error("loading worker {worker_id}: {message}")]
    Load { worker_id: String, message: String },
    #[error("worker {0} is not placed on any host")]
    NotPlaced(String),
    #[error("the host of worker {worker_id} went away during {step}")]
    HostGone {
        worker_id: String,
        step: &'static str,
    },
    #[error("the pool is shutting down")]
    ShuttingDown,
    #[error(
        "{running} host processes are running, the limit set by HOST_POOL_MAX_HOSTS ({max}); stop a worker with a dedicated host or raise the setting"
    )]
    TooManyHosts { running: usize, max: usize },
}

impl Pool {
    pub fn new(
        config: PoolConfig,
        events: Arc<Events>,
    ) -> std::io::Result<(Arc<Pool>, mpsc::Receiver<PoolEvent>)> {
        let spawner = Spawner::new(config.spawn.clone())?;
        let (notify, rx) = mpsc::channel(POOL_EVENTS_CAPACITY);
        let guard = Guard::new(&config.limits);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let standbys = Arc::new(standby::Standbys::new(
            config.standby,
            spawner.clone(),
            config.respawn_backoff_base,
            shutdown.clone(),
            tasks.clone(),
        ));
        Ok((
            Arc::new(Pool {
                config,
                spawner,
                slots: Mutex::new(Vec::new()),
                placement: Mutex::new(HashMap::new()),
                crash_times: Mutex::new(HashMap::new()),
                next_slot: AtomicU64::new(1),
                events,
                notify,
                guard,
                standbys,
                shutdown,
                tasks,
            }),
            rx,
        ))
    }

    /// Places `spec` on a host (starting one if needed) and loads it there. For a worker that
    /// is already placed this is a hot reload on the same host.
    pub async fn load(self: &Arc<Self>, spec: WorkerSpec) -> Result<(), PoolError> {
        if self.shutdown.is_cancelled() {
            return Err(PoolError::ShuttingDown);
        }
        let placed = lock(&self.placement).get(&spec.id).cloned();
        if let Some(old) = placed
            && old.limits != spec.limits
        {
            return self.relocate(old, spec).await;
        }
        let slot = self.place(&spec)?;
        lock(&slot.workers).insert(spec.id.clone(), spec.clone());
        let result = self.load_on_current(&slot, &spec).await;
        if result.is_err() {
            // Keep no half-placed worker: a failed first load leaves nothing behind.
            let was_new = lock(&slot.workers).remove(&spec.id).is_some();
            if was_new {
                lock(&self.placement).remove(&spec.id);
                self.retire_if_empty(&slot);
            }
        }
        result
    }

    /// A reload with other limits: they are a property of the process, so the worker moves to
    /// a host spawned with them. It is loaded there first and leaves its old host after, so
    /// its calls find a host all along; if the new load fails, nothing changes.
    async fn relocate(self: &Arc<Self>, old: Arc<Slot>, spec: WorkerSpec) -> Result<(), PoolError> {
        let slot = self.slot_for(&spec)?;
        lock(&slot.workers).insert(spec.id.clone(), spec.clone());
        if let Err(e) = self.load_on_current(&slot, &spec).await {
            lock(&slot.workers).remove(&spec.id);
            self.retire_if_empty(&slot);
            return Err(e);
        }
        lock(&self.placement).insert(spec.id.clone(), slot.clone());
        tracing::info!(worker = %spec.id, from = %old.id, to = %slot.id, "worker moved to a host with its new limits");
        self.leave_slot(&old, &spec.id).await;
        Ok(())
    }

    async fn load_on_current(&self, slot: &Arc<Slot>, spec: &WorkerSpec) -> Result<(), PoolError> {
        let host = self.wait_current(slot).await?;
        // A reload keeps the lanes of the running version; a first load gets new ones, which
        // go back if the load fails.
        let fresh = host.link.lanes_of(&spec.id).is_empty();
        let msg = load_message(spec, self.config.load_timeout, &host.link);
        let res = tokio::time::timeout(self.config.load_timeout, host.link.request(msg)).await;
        if fresh && !matches!(&res, Ok(Ok(Message::LoadResult(r))) if r.ok) {
            host.link.release_lanes(&spec.id);
        }
        match res {
            Ok(Ok(Message::LoadResult(r))) if r.ok => {
                if spec.engine == wm_shared::package::EngineKind::CSharpSource
                    && let Some(tmp) = host.tmp_dir.clone()
                {
                    let dir = spec.package_dir.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::csharp_source::harvest(&tmp, &dir)
                    })
                    .await;
                }
                Ok(())
            }
            Ok(Ok(Message::LoadResult(r))) => Err(PoolError::Load {
                worker_id: spec.id.clone(),
                message: r.error,
            }),
            Ok(Ok(other)) => Err(PoolError::Load {
                worker_id: spec.id.clone(),
                message: format!("the host answered LoadWorker with {other:?}"),
            }),
            // The host lives on; this load cannot be sent (config over RING_MAX_FRAME_BYTES).
            Ok(Err(e @ (LinkError::TooLarge { .. } | LinkError::Send { .. }))) => {
                Err(PoolError::Load {
                    worker_id: spec.id.clone(),
                    message: e.to_string(),
                })
            }
            Ok(Err(_)) => Err(PoolError::HostGone {
                worker_id: spec.id.clone(),
                step: "load",
            }),
            Err(_) => Err(PoolError::Load {
                worker_id: spec.id.clone(),
                message: format!(
                    "the host did not confirm the load within {:?}",
                    self.config.load_timeout
                ),
            }),
        }
    }

    /// Unloads a worker and forgets its placement. A dedicated host ends with its worker.
    pub async fn unload(&self, worker_id: &str) -> Result<(), PoolError> {
        let slot = lock(&self.placement).remove(worker_id);
        let Some(slot) = slot else {
            return Ok(());
        };
        self.leave_slot(&slot, worker_id).await;
        self.guard.forget(worker_id);
        Ok(())
    }

    /// Takes a worker off `slot`: unloaded from its host (confirmed or timed out), and the slot
    /// retired if it was dedicated and is now empty.
    async fn leave_slot(&self, slot: &Arc<Slot>, worker_id: &str) {
        lock(&slot.workers).remove(worker_id);
        // Until the host confirms the unload, what the plugin logs or asks while it is
        // disposed still comes from a worker of this host.
        lock(&slot.leaving).insert(worker_id.to_string());
        let host = slot.current.borrow().clone();
        if let Some(host) = host {
            let req = host.link.request(Message::UnloadWorker(UnloadWorker {
                request_id: next_request_id(),
                worker_id: worker_id.to_string(),
            }));
            match tokio::time::timeout(self.config.load_timeout, req).await {
                Ok(Ok(Message::UnloadResult(r))) => {
                    if !r.ok {
                        tracing::warn!(worker = worker_id, "unload reported: {}", r.error);
                    }
                    // Its threads have ended: their lanes are free. (Unconfirmed, they stay
                    // taken until the host ends: a hung thread may still hold them.)
                    host.link.release_lanes(worker_id);
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(worker = worker_id, "unload not confirmed in time"),
            }
        }
        lock(&slot.leaving).remove(worker_id);
        self.retire_if_empty(slot);
    }

    /// The current live host of a worker; waits while its host is being respawned.
    /// `None` when the worker is not placed (stopped, quarantined) or the pool shuts down.
    pub async fn host_for(&self, worker_id: &str) -> Option<Arc<HostHandle>> {
        let slot = lock(&self.placement).get(worker_id).cloned()?;
        self.wait_current(&slot).await.ok()
    }

    /// Calls of this worker running on its host now.
    pub fn in_flight_of(&self, worker_id: &str) -> u64 {
        let slot = lock(&self.placement).get(worker_id).cloned();
        let host = slot.and_then(|s| s.current.borrow().clone());
        host.map_or(0, |h| {
            lock(&h.in_flight)
                .values()
                .filter(|w| *w == worker_id)
                .count() as u64
        })
    }

    /// Whether a worker is placed (loaded or being reloaded) on some host.
    pub fn is_placed(&self, worker_id: &str) -> bool {
        lock(&self.placement).contains_key(worker_id)
    }

    /// The pid of the host currently carrying the worker.
    pub fn host_pid(&self, worker_id: &str) -> Option<i32> {
        let slot = lock(&self.placement).get(worker_id).cloned()?;
        slot.current.borrow().as_ref().map(|h| h.pid)
    }

    pub fn hosts(&self) -> Vec<HostInfo> {
        lock(&self.slots)
            .iter()
            .map(|s| {
                let mut workers: Vec<String> = lock(&s.workers).keys().cloned().collect();
                workers.sort();
                let host = s.current.borrow().clone();
                HostInfo {
                    id: s.id.clone(),
                    pid: host.as_ref().map(|h| h.pid),
                    engine: from_protocol_engine(s.engine),
                    isolation: if s.dedicated {
                        Isolation::Dedicated
                    } else {
                        Isolation::Shared
                    },
                    workers,
                    restarts: u32::try_from(s.restarts.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
                    crashes: s.crashes.load(Ordering::Relaxed),
                    rss_bytes: s.rss.load(Ordering::Relaxed),
                    in_flight: host.as_ref().map_or(0, |h| h.in_flight() as u64),
                    sandbox: host.as_ref().map(|h| h.layers.clone()),
                    identity_violations: s.violations.get(),
                    limits: s.limits,
                }
            })
            .collect()
    }

    /// The idle standby hosts (`HOST_STANDBY`), with their memory.
    pub fn standby_hosts(&self) -> Vec<standby::StandbyInfo> {
        self.standbys.list()
    }

    /// Stops every host: `Shutdown` with a deadline, then SIGKILL for stragglers.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.cancel();
        let slots: Vec<Arc<Slot>> = lock(&self.slots).clone();
        for slot in &slots {
            if let Some(h) = slot.current.borrow().clone() {
                // Never wait for room: a host that does not read is killed after the deadline.
                let _ = h.link.try_send(&Message::Shutdown {
                    deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
                });
            }
            slot.closed.cancel();
        }
        self.tasks.close();
        // Slot tasks kill their host if it has not exited by the deadline.
        if tokio::time::timeout(deadline + Duration::from_secs(2), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some host tasks did not finish after the shutdown deadline");
        }
    }

    fn place(self: &Arc<Self>, spec: &WorkerSpec) -> Result<Arc<Slot>, PoolError> {
        if let Some(slot) = lock(&self.placement).get(&spec.id).cloned() {
            return Ok(slot);
        }
        let slot = self.slot_for(spec)?;
        lock(&self.placement).insert(spec.id.clone(), slot.clone());
        Ok(slot)
    }

    /// The slot a worker that is not placed yet goes to: a new dedicated one (its own
    /// isolation or limits) or the least loaded shared one of its engine.
    fn slot_for(self: &Arc<Self>, spec: &WorkerSpec) -> Result<Arc<Slot>, PoolError> {
        let engine = to_protocol_engine(spec.engine);
        let isolation = if spec.limits.is_empty() {
            spec.isolation
        } else {
            Isolation::Dedicated
        };
        let slot = match isolation {
            Isolation::Dedicated => self.new_slot(engine, true, spec.limits)?,
            Isolation::Shared => {
                let existing: Vec<Arc<Slot>> = lock(&self.slots)
                    .iter()
                    .filter(|s| !s.dedicated && s.engine == engine && !s.closed.is_cancelled())
                    .cloned()
                    .collect();
                let least_loaded = existing
                    .iter()
                    .min_by_key(|s| lock(&s.workers).len())
                    .cloned();
                if existing.len() < self.config.shared_hosts_per_engine.max(1) {
                    match (
                        self.new_slot(engine, false, WorkerLimits::default()),
                        least_loaded,
                    ) {
                        (Ok(slot), _) => slot,
                        // At HOST_POOL_MAX_HOSTS: share a running host rather than fail.
                        (Err(_), Some(slot)) => slot,
                        (Err(e), None) => return Err(e),
                    }
                } else {
                    match least_loaded {
                        Some(slot) => slot,
                        None => self.new_slot(engine, false, WorkerLimits::default())?,
                    }
                }
            }
        };
        Ok(slot)
    }

    /// A new slot and its task, unless `HOST_POOL_MAX_HOSTS` slots exist already.
    fn new_slot(
        self: &Arc<Self>,
        engine: EngineKind,
        dedicated: bool,
        limits: WorkerLimits,
    ) -> Result<Arc<Slot>, PoolError> {
        let mut slots = lock(&self.slots);
        let max = self.config.limits.max_hosts.max(1);
        if slots.len() >= max {
            tracing::warn!(
                running = slots.len(),
                max,
                "no new host: HOST_POOL_MAX_HOSTS reached"
            );
            return Err(PoolError::TooManyHosts {
                running: slots.len(),
                max,
            });
        }
        let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}-{}-{n}",
            engine_name(engine),
            if dedicated { "dedicated" } else { "shared" }
        );
        let (current, _) = watch::channel(None);
        let slot = Arc::new(Slot {
            id,
            engine,
            dedicated,
            limits,
            workers: Mutex::new(HashMap::new()),
            current,
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            rss: AtomicU64::new(0),
            violations: Arc::new(Violations::default()),
            leaving: Mutex::new(HashSet::new()),
            closed: self.shutdown.child_token(),
        });
        slots.push(slot.clone());
        drop(slots);
        // From the first slot of an engine on, a standby host of that engine waits for the
        // first respawn. A slot with its own limits never adopts one (a standby has the
        // engine's limits), so it starts no keeper either.
        if limits.is_empty() {
            self.standbys.ensure(engine);
        }
        let pool = Arc::clone(self);
        let s = slot.clone();
        self.tasks.spawn(async move { pool.run_slot(s).await });
        Ok(slot)
    }

    fn retire_if_empty(&self, slot: &Arc<Slot>) {
        // Shared slots stay (a host ready for the next worker); dedicated ones end.
        if slot.dedicated && lock(&slot.workers).is_empty() {
            slot.closed.cancel();
            lock(&self.slots).retain(|s| !Arc::ptr_eq(s, slot));
        }
    }

    async fn wait_current(&self, slot: &Arc<Slot>) -> Result<Arc<HostHandle>, PoolError> {
        let mut rx = slot.current.subscribe();
        loop {
            if let Some(h) = rx.borrow_and_update().clone() {
                return Ok(h);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(PoolError::ShuttingDown) },
                _ = slot.closed.cancelled() => return Err(PoolError::ShuttingDown),
            }
        }
    }

    /// Renders the host-input counters (rates, stderr) for `/metrics`.
    pub fn render_guard_metrics(&self, out: &mut String) {
        self.guard.render_prometheus(out);
    }
}

/// Stops a host at shutdown or when its slot retires: a `Shutdown` notice if its ring has room,
/// a moment to exit on its own, then SIGKILL.
async fn stop_host(spawned: &mut spawn::SpawnedHost) -> ExitStatus {
    let _ = spawned
        .link
        .try_send(&Message::Shutdown { deadline_ms: 2000 });
    let exit = &mut spawned.exit;
    match tokio::time::timeout(Duration::from_secs(5), exit.wait()).await {
        Ok(status) => status,
        Err(_) => {
            exit.kill();
            exit.wait().await
        }
    }
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique id for requests and messages sent to hosts.
pub fn next_request_id() -> u64 {
    REQUEST_IDS.fetch_add(1, Ordering::Relaxed)
}

/// The `LoadWorker` of `spec`, with a ring lane per worker thread from `link` (as many as
/// are free: `RING_LANES`).
fn load_message(spec: &WorkerSpec, timeout: Duration, link: &HostLink) -> Message {
    let threads = spec.max_concurrency.max(1);
    Message::LoadWorker(LoadWorker {
        lanes: link.assign_lanes(&spec.id, threads),
        request_id: next_request_id(),
        worker_id: spec.id.clone(),
        engine: to_protocol_engine(spec.engine),
        package_dir: spec.package_dir.display().to_string(),
        library_path: spec.package.library_path.clone(),
        entry_point: spec.package.entry_point.clone(),
        free_result: spec.package.free_result.clone(),
        topic: spec.topic.clone(),
        config: spec.config.clone(),
        max_concurrency: spec.max_concurrency.max(1),
        timeout_ms: u32::try_from(spec.message_timeout.max(timeout).as_millis())
            .unwrap_or(u32::MAX),
    })
}

fn to_protocol_engine(e: wm_shared::package::EngineKind) -> EngineKind {
    match e {
        wm_shared::package::EngineKind::Native => EngineKind::Native,
        // C# source runs in the .NET hosts: the bridge compiles it with Roslyn.
        wm_shared::package::EngineKind::DotNet | wm_shared::package::EngineKind::CSharpSource => {
            EngineKind::DotNet
        }
        wm_shared::package::EngineKind::Python | wm_shared::package::EngineKind::PythonWheel => {
            EngineKind::Python
        }
    }
}

fn from_protocol_engine(e: EngineKind) -> wm_shared::package::EngineKind {
    match e {
        EngineKind::DotNet => wm_shared::package::EngineKind::DotNet,
        EngineKind::Python => wm_shared::package::EngineKind::Python,
        _ => wm_shared::package::EngineKind::Native,
    }
}

fn engine_name(e: EngineKind) -> &'static str {
    match e {
        EngineKind::DotNet => "dotnet",
        EngineKind::Python => "python",
        _ => "native",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;
    use wm_shared::protocol::ProcessResult;

    use super::handle::send_failure;

    #[test]
    fn the_first_death_of_a_series_respawns_at_once_then_backoff_doubles() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(respawn_delay(b, m, 0), Duration::ZERO);
        assert_eq!(respawn_delay(b, m, 1), Duration::ZERO);
        assert_eq!(respawn_delay(b, m, 2), Duration::from_millis(100));
        assert_eq!(respawn_delay(b, m, 3), Duration::from_millis(200));
        assert_eq!(respawn_delay(b, m, 40), m);
        // A series restarts after a host stayed up or died of a culprit call.
        assert_eq!(
            respawn_delay(b, m, next_failures(5, true, false)),
            Duration::ZERO
        );
        assert_eq!(
            respawn_delay(b, m, next_failures(5, false, true)),
            Duration::ZERO
        );
        assert_eq!(
            respawn_delay(b, m, next_failures(1, false, false)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        assert_eq!(backoff(b, m, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, m, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, m, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, m, 30), m);
        assert_eq!(backoff(b, m, 0), Duration::from_millis(100));
    }

    #[test]
    fn a_death_with_a_culprit_respawns_after_the_base_delay() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        // Twelve crashes of one worker in a row, each pinned on its call: the neighbours on the
        // host never wait more than the base delay.
        let mut f = 0;
        for _ in 0..12 {
            f = next_failures(f, false, true);
            assert_eq!(backoff(base, max, f), base);
        }
        // Deaths nobody is charged with still back off, until the host stays up.
        let mut f = 0;
        for _ in 0..12 {
            f = next_failures(f, false, false);
        }
        assert_eq!(backoff(base, max, f), max);
        assert_eq!(next_failures(f, true, false), 1);

        assert!(report(Some(("a", 7)), None).has_culprit());
        assert!(report(None, Some(("b", 9))).has_culprit());
        assert!(!report(None, None).has_culprit());
        assert!(
            !report(Some(("", 0)), None).has_culprit(),
            "a crash off any plugin call names nobody"
        );
    }

    fn report(crash: Option<(&str, u64)>, reclaimed: Option<(&str, u64)>) -> DeathReport {
        DeathReport {
            host_id: "h".into(),
            pid: 1,
            status: ExitStatus::Signaled(11),
            crash: crash.map(|(w, m)| CrashRecord {
                signal: 11,
                tid: 2,
                worker_id: w.into(),
                msg_id: m,
                fault_addr: 0,
            }),
            reclaimed: reclaimed.map(|(w, m)| (w.to_string(), m)),
            violation: None,
            in_flight: [
                (7, "a".to_string()),
                (8, "b".to_string()),
                (9, "b".to_string()),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// A host that never reads its ring: a Process that cannot be sent is a failure of that
    /// message (`SendFailed`), never a death to wait for, and leaves nothing in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_failure_is_not_a_death() {
        let ring = wm_shared::ring::RingConfig {
            ring_bytes: 16384,
            max_frame: 4096,
            ..Default::default()
        };
        let region = Arc::new(wm_shared::ring::Region::create("wm-pool-send-test", &ring).unwrap());
        let (link, _frames) = HostLink::new(region);
        let (_death_tx, death) = watch::channel(None);
        let handle = HostHandle {
            host_id: "h".into(),
            pid: 1,
            engine: EngineKind::Native,
            link: link.clone(),
            layers: layers::HostLayers::default(),
            in_flight: Mutex::new(HashMap::new()),
            death,
            reclaim: Mutex::new(None),
            violation: Mutex::new(None),
            kill: tokio::sync::Notify::new(),
            violations: Arc::new(Violations::default()),
            gateway_slots: Arc::new(Semaphore::new(1)),
            tmp_dir: None,
        };
        let watchdog = Duration::from_secs(30);
        let big = tokio::time::timeout(
            watchdog,
            handle.call("w", 1, vec![0; 8192], Duration::from_secs(60)),
        )
        .await
        .expect("an oversize frame must not wait for a death");
        assert!(
            matches!(&big, CallOutcome::SendFailed { too_large: true, reason } if reason.contains("RING_MAX_FRAME_BYTES")),
            "{big:?}"
        );
        // Fill the to-host ring; nobody reads it.
        while link.try_send(&Message::Ping { nonce: 1 }).is_ok() {}
        let stuck = tokio::time::timeout(
            watchdog,
            handle.call("w", 2, vec![0; 16], Duration::from_secs(60)),
        )
        .await
        .expect("a full ring must not wait for a death");
        assert!(
            matches!(
                stuck,
                CallOutcome::SendFailed {
                    too_large: false,
                    ..
                }
            ),
            "{stuck:?}"
        );
        assert_eq!(handle.in_flight(), 0, "the failed calls are not in flight");
        assert!(
            send_failure(&LinkError::PeerGone).is_none()
                && send_failure(&LinkError::HostMisbehaved { reason: "x".into() }).is_none(),
            "only a gone or cut-off host is a death"
        );
        link.peer_died();
    }

    /// A host answering a call in another worker's name is refused and counted; so is a result
    /// for a message that is not in flight on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_in_another_workers_name_are_refused_and_counted() {
        let ring = wm_shared::ring::RingConfig {
            ring_bytes: 1 << 16,
            max_frame: 8192,
            ..Default::default()
        };
        let region =
            Arc::new(wm_shared::ring::Region::create("wm-pool-forge-test", &ring).unwrap());
        let host_side = Arc::new(
            wm_shared::ring::Region::open(region.as_fd().try_clone_to_owned().unwrap()).unwrap(),
        );
        // A host that answers every Process in the name of worker "mallory".
        let fake = std::thread::spawn(move || {
            let (tx, mut rx) = wm_shared::ring::host_channels(host_side);
            let mut buf = Vec::new();
            if rx.recv(&mut buf, Some(Duration::from_secs(20))).is_ok()
                && let Ok(Message::Process(p)) = Message::decode(&buf)
            {
                let forged = Message::ProcessResult(ProcessResult {
                    msg_id: p.msg_id,
                    worker_id: "mallory".into(),
                    ..Default::default()
                });
                let _ = tx.send(&forged.encode(), Duration::from_secs(5));
            }
        });
        let (link, _frames) = HostLink::new(region);
        let (_death_tx, death) = watch::channel(None);
        let handle = HostHandle {
            host_id: "h".into(),
            pid: 1,
            engine: EngineKind::Native,
            link: link.clone(),
            layers: layers::HostLayers::default(),
            in_flight: Mutex::new(HashMap::new()),
            death,
            reclaim: Mutex::new(None),
            violation: Mutex::new(None),
            kill: tokio::sync::Notify::new(),
            violations: Arc::new(Violations::default()),
            gateway_slots: Arc::new(Semaphore::new(1)),
            tmp_dir: None,
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            handle.call("alice", 7, vec![1, 2, 3], Duration::from_secs(20)),
        )
        .await
        .expect("watchdog");
        assert!(
            matches!(&outcome, CallOutcome::Forged(why) if why.contains("mallory") && why.contains("alice")),
            "{outcome:?}"
        );
        assert_eq!(handle.violations(), 1);
        assert_eq!(handle.in_flight(), 0);
        let stray = ProcessResult {
            msg_id: 99,
            worker_id: "alice".into(),
            ..Default::default()
        };
        assert!(!handle.late_result(&stray), "message 99 is not in flight");
        lock(&handle.in_flight).insert(99, "alice".into());
        assert!(handle.late_result(&stray), "a late answer of a real call");
        link.peer_died();
        fake.join().unwrap();
    }

    #[test]
    fn verdicts_follow_the_crash_record() {
        let r = report(Some(("a", 7)), None);
        assert_eq!(r.verdict(7), Verdict::Culprit);
        assert_eq!(r.verdict(8), Verdict::Bystander);
        assert_eq!(r.charged_workers(), vec!["a".to_string()]);

        let r = report(None, None);
        assert_eq!(r.verdict(7), Verdict::Unattributed);
        assert_eq!(r.charged_workers(), vec!["a".to_string(), "b".to_string()]);

        let r = report(None, Some(("b", 9)));
        assert_eq!(r.verdict(9), Verdict::Culprit);
        assert_eq!(r.verdict(7), Verdict::Bystander);
        assert!(
            r.charged_workers().is_empty(),
            "a reclaim is a timeout, not a crash"
        );
        assert_eq!(r.cause(), "host h (pid 1) died of SIGSEGV");
    }
}
