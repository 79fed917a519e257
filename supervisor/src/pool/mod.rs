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

pub mod guard;
pub mod launch;
pub mod layers;
pub mod spawn;
pub mod standby;
pub mod stderr;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wm_shared::protocol::link::{HostLink, LinkError};
use wm_shared::protocol::{
    EngineKind, GatewayCall, GatewayReply, LoadWorker, Log, Message, Process, ProcessResult,
    UnloadWorker,
};
use wm_shared::ring::CrashRecord;

use crate::events::Events;
use crate::runtime::{HostInfo, Isolation, WorkerSpec};
use crate::worker_limits::WorkerLimits;
use guard::{Guard, HostLimits, Rated, Violations};
pub use spawn::{ExitStatus, SpawnConfig, SpawnError, Spawner, signal_name};

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

/// Why a host died, as far as the supervisor can tell. Built after the process was reaped.
#[derive(Debug, Clone)]
pub struct DeathReport {
    pub host_id: String,
    pub pid: i32,
    pub status: ExitStatus,
    /// What the host's crash handler recorded (copied out of shared memory and validated).
    pub crash: Option<CrashRecord>,
    /// Set when the supervisor killed the host to reclaim a hung call: (worker, message).
    pub reclaimed: Option<(String, u64)>,
    /// Set when the supervisor cut the host off for breaking the protocol (a corrupt ring, an
    /// undecodable frame, a reply of the wrong kind): what it did.
    pub violation: Option<String>,
    /// Calls in flight when it died: message id -> worker id.
    pub in_flight: HashMap<u64, String>,
}

/// What a death means for one message that was in flight on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its call was on the faulting thread: charge an attempt.
    Culprit,
    /// Another call brought the host down: requeue without charge.
    Bystander,
    /// Nobody recorded anything (SIGKILL from outside, OOM killer): charge an attempt.
    Unattributed,
}

impl DeathReport {
    pub fn verdict(&self, msg_id: u64) -> Verdict {
        if let Some((_, culprit)) = &self.reclaimed {
            return if *culprit == msg_id {
                Verdict::Culprit
            } else {
                Verdict::Bystander
            };
        }
        match &self.crash {
            Some(rec) if rec.msg_id == msg_id => Verdict::Culprit,
            Some(_) => Verdict::Bystander,
            None => Verdict::Unattributed,
        }
    }

    /// The syscall the sandbox refused, when that is what ended the host.
    pub fn forbidden_syscall(&self) -> Option<String> {
        self.crash.as_ref().and_then(|c| c.forbidden_syscall_name())
    }

    /// What ended the host, for error messages, dead letters and `host.crashed`: the forbidden
    /// syscall and the worker whose call made it, the protocol violation, or the signal name
    /// or exit code.
    pub fn cause(&self) -> String {
        if let (Some(name), Some(rec)) = (self.forbidden_syscall(), self.crash.as_ref()) {
            return if rec.worker_id.is_empty() {
                format!(
                    "a plugin on host {} (pid {}) called {name}(2), which the sandbox forbids; the host was ended",
                    self.host_id, self.pid
                )
            } else {
                format!(
                    "worker '{}' called {name}(2), which the sandbox forbids; its host {} (pid {}) was ended",
                    rec.worker_id, self.host_id, self.pid
                )
            };
        }
        if let Some(what) = &self.violation {
            return format!(
                "host {} (pid {}) broke the host protocol and was ended: {what}",
                self.host_id, self.pid
            );
        }
        let sig = self.crash.as_ref().map(|c| c.signal).or(match self.status {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Exited(_) => None,
        });
        match (sig, &self.status) {
            (Some(s), _) => format!(
                "host {} (pid {}) died of {}",
                self.host_id,
                self.pid,
                signal_name(s)
            ),
            (None, st) => format!("host {} (pid {}) ended: {st}", self.host_id, self.pid),
        }
    }

    /// True when the death is pinned on one call: the crash handler recorded the worker and
    /// message on the faulting thread, or the supervisor killed the host to reclaim a hung call.
    pub fn has_culprit(&self) -> bool {
        self.reclaimed.is_some()
            || self
                .crash
                .as_ref()
                .is_some_and(|c| c.msg_id != 0 && !c.worker_id.is_empty())
    }

    /// The workers charged with this death for crash-loop counting.
    fn charged_workers(&self) -> Vec<String> {
        if self.reclaimed.is_some() {
            return Vec::new();
        }
        match &self.crash {
            Some(rec) if !rec.worker_id.is_empty() => vec![rec.worker_id.clone()],
            _ => {
                let mut w: Vec<String> = self.in_flight.values().cloned().collect();
                w.sort();
                w.dedup();
                w
            }
        }
    }
}

/// What a call on a host came to.
#[derive(Debug)]
pub enum CallOutcome {
    Done(ProcessResult),
    /// The deadline passed; the call is still running on the host.
    TimedOut,
    HostDied(Arc<DeathReport>),
    /// The call never reached the host: its ring stayed full for `SEND_TIMEOUT`, or the frame
    /// is over `RING_MAX_FRAME_BYTES` (`too_large`: sending it again can never work). The host
    /// is alive; this is a failure of this one message, not a death.
    SendFailed {
        reason: String,
        too_large: bool,
    },
    /// The host answered in the name of another worker than the one called (an identity
    /// violation, counted for the host): the answer is refused.
    Forged(String),
}

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

/// One live generation of a host process.
#[derive(Debug)]
pub struct HostHandle {
    pub host_id: String,
    pub pid: i32,
    pub engine: EngineKind,
    pub link: HostLink,
    /// The sandbox layers this process runs under.
    pub layers: layers::HostLayers,
    in_flight: Mutex<HashMap<u64, String>>,
    death: watch::Receiver<Option<Arc<DeathReport>>>,
    reclaim: Mutex<Option<(String, u64)>>,
    /// The protocol violation the host was cut off for, if any.
    violation: Mutex<Option<String>>,
    kill: tokio::sync::Notify,
    /// The slot's count of identity violations (survives respawns).
    violations: Arc<Violations>,
    /// Places for gateway calls being served (`HOST_GATEWAY_CALLS_IN_FLIGHT`).
    gateway_slots: Arc<Semaphore>,
    /// The host's private temp folder (where it leaves compiled C# source), if it has one.
    tmp_dir: Option<std::path::PathBuf>,
}

impl HostHandle {
    /// Sends one Process frame and waits for its result, the deadline, or the host's death.
    pub async fn call(
        &self,
        worker_id: &str,
        msg_id: u64,
        event: Vec<u8>,
        timeout: Duration,
    ) -> CallOutcome {
        lock(&self.in_flight).insert(msg_id, worker_id.to_string());
        let req = self.link.request(Message::Process(Process {
            msg_id,
            worker_id: worker_id.to_string(),
            event,
        }));
        match tokio::time::timeout(timeout, req).await {
            Ok(Ok(Message::ProcessResult(r))) => {
                lock(&self.in_flight).remove(&msg_id);
                if r.worker_id != worker_id {
                    self.violations.add();
                    let why = format!(
                        "host {} answered message {msg_id} of worker '{worker_id}' in the name of worker '{}'",
                        self.host_id,
                        truncated(&r.worker_id)
                    );
                    tracing::warn!(host = %self.host_id, pid = self.pid, "{why}; refused");
                    return CallOutcome::Forged(why);
                }
                CallOutcome::Done(r)
            }
            Ok(Ok(other)) => {
                // A host answering with the wrong kind is broken: treat it as dead.
                tracing::error!(host = %self.host_id, "host answered Process with {other:?}; killing it");
                self.cut_off(format!("it answered a Process frame with {}", other.kind()));
                CallOutcome::HostDied(self.died().await)
            }
            Ok(Err(e)) => self.call_failed(msg_id, e).await,
            Err(_) => CallOutcome::TimedOut,
        }
    }

    /// Maps a link error of a `Process` call: only a gone or cut-off host means a death (and
    /// only then is the death report awaited); a send that failed leaves the host alive.
    async fn call_failed(&self, msg_id: u64, e: LinkError) -> CallOutcome {
        match send_failure(&e) {
            Some(outcome) => {
                lock(&self.in_flight).remove(&msg_id);
                if let LinkError::Send { .. } = e {
                    // Its ring stayed full for SEND_TIMEOUT: the host does not read. It is
                    // killed (and respawned) rather than left to fail every later call.
                    tracing::error!(host = %self.host_id, pid = self.pid, msg_id, error = %e,
                        "the host does not read its ring; killing it");
                    self.kill.notify_one();
                } else {
                    tracing::warn!(host = %self.host_id, pid = self.pid, msg_id, error = %e, "call not sent");
                }
                outcome
            }
            None => CallOutcome::HostDied(self.died().await),
        }
    }

    /// Sends a gateway reply without blocking a thread. A host that leaves its ring full for
    /// `SEND_TIMEOUT` while it waits for a reply is stuck or hostile: it is killed.
    pub async fn reply(&self, reply: GatewayReply) {
        match self.link.send_async(&Message::GatewayReply(reply)).await {
            Ok(()) | Err(LinkError::PeerGone) => {}
            Err(e) => {
                tracing::error!(host = %self.host_id, pid = self.pid, error = %e,
                    "gateway reply not delivered: the host does not read its ring; killing it");
                self.kill.notify_one();
            }
        }
    }

    /// Identity violations of this host's slot so far.
    pub fn violations(&self) -> u64 {
        self.violations.get()
    }

    /// Waits for the death report of this generation (after the host is gone).
    pub async fn died(&self) -> Arc<DeathReport> {
        let mut rx = self.death.clone();
        loop {
            if let Some(r) = rx.borrow().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The slot task is gone without a report: the pool is shutting down.
                return Arc::new(DeathReport {
                    host_id: self.host_id.clone(),
                    pid: self.pid,
                    status: ExitStatus::Exited(-1),
                    crash: None,
                    reclaimed: None,
                    violation: lock(&self.violation).clone(),
                    in_flight: lock(&self.in_flight).clone(),
                });
            }
        }
    }

    /// Kills the host after `grace` unless the call `msg_id` has returned by then (the
    /// documented timeout leaves the plugin running; we end it so the thread does not live
    /// forever).
    pub fn reclaim_after(self: &Arc<Self>, grace: Duration, worker_id: &str, msg_id: u64) {
        let this = Arc::clone(self);
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_running = lock(&this.in_flight).contains_key(&msg_id);
            if still_running && this.death.borrow().is_none() {
                tracing::warn!(host = %this.host_id, pid = this.pid, worker = %worker_id, msg_id,
                    "call still running {grace:?} after its timeout; killing the host to reclaim it");
                *lock(&this.reclaim) = Some((worker_id, msg_id));
                this.kill.notify_one();
            }
        });
    }

    /// Records `what` as the protocol violation this host is ended for, and kills it.
    pub fn cut_off(&self, what: String) {
        lock(&self.violation).get_or_insert(what);
        self.kill.notify_one();
    }

    /// Whether call `msg_id` is still running in this host (e.g. one that timed out).
    pub fn is_running(&self, msg_id: u64) -> bool {
        lock(&self.in_flight).contains_key(&msg_id)
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// A `ProcessResult` nobody waits for: the late answer of a call that timed out or whose
    /// caller left. `false` when no such call is in flight on this host (forged).
    fn late_result(&self, r: &ProcessResult) -> bool {
        let mut in_flight = lock(&self.in_flight);
        match in_flight.get(&r.msg_id) {
            Some(w) if *w == r.worker_id => {
                in_flight.remove(&r.msg_id);
                true
            }
            _ => false,
        }
    }
}

/// `Some` outcome when a link error means the frame was not sent (the host lives on).
fn send_failure(e: &LinkError) -> Option<CallOutcome> {
    match e {
        LinkError::TooLarge { .. } => Some(CallOutcome::SendFailed {
            reason: e.to_string(),
            too_large: true,
        }),
        LinkError::Send { .. }
        | LinkError::DuplicateRequest { .. }
        | LinkError::NotARequest { .. } => Some(CallOutcome::SendFailed {
            reason: e.to_string(),
            too_large: false,
        }),
        LinkError::PeerGone | LinkError::HostMisbehaved { .. } => None,
    }
}

/// At most 64 bytes of a host-supplied name, for messages.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding it; the data (plain maps)
    // is still consistent enough to carry on, and refusing would turn one bug into an outage.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

    /// Keeps a host alive for one slot until the slot closes.
    async fn run_slot(self: Arc<Self>, slot: Arc<Slot>) {
        let mut failures: u32 = 0;
        let mut generation: u64 = 0;
        // `host.crashed` / `host.respawned` are durable publishes (an fsync each): they go out
        // in order beside the respawn instead of in front of it.
        let mut lifecycle = LifecycleQueue::default();
        while !slot.closed.is_cancelled() {
            generation += 1;
            let host_id = format!("{}.{generation}", slot.id);
            let spawned = tokio::select! {
                r = self.adopt_or_spawn(&host_id, slot.engine, &slot.limits) => r,
                _ = slot.closed.cancelled() => break,
            };
            let mut spawned = match spawned {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    let delay = backoff(
                        self.config.respawn_backoff_base,
                        self.config.respawn_backoff_max,
                        failures,
                    );
                    tracing::error!(slot = %slot.id, "{e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = slot.closed.cancelled() => break,
                    }
                }
            };
            let started = Instant::now();
            let (death_tx, death_rx) = watch::channel(None);
            let handle = Arc::new(HostHandle {
                host_id: host_id.clone(),
                pid: spawned.pid,
                engine: slot.engine,
                link: spawned.link.clone(),
                layers: spawned.layers.clone(),
                in_flight: Mutex::new(HashMap::new()),
                death: death_rx,
                reclaim: Mutex::new(None),
                violation: Mutex::new(None),
                kill: tokio::sync::Notify::new(),
                violations: slot.violations.clone(),
                gateway_slots: Arc::new(Semaphore::new(
                    self.config.limits.gateway_in_flight_per_host.max(1),
                )),
                tmp_dir: spawned.tmp_dir.as_ref().map(|t| t.path.clone()),
            });
            tracing::info!(host = %host_id, pid = spawned.pid, sandbox = %spawned.ready.sandbox, "host ready");
            if generation > 1 {
                slot.restarts.fetch_add(1, Ordering::Relaxed);
                let (events, id, pid) = (self.events.clone(), host_id.clone(), spawned.pid);
                let restarts = slot.restarts.load(Ordering::Relaxed) as u32;
                lifecycle.then(async move { events.host_respawned(&id, pid, restarts).await });
            }

            // Reload every worker of the slot before anyone may call the new host.
            let specs: Vec<WorkerSpec> = lock(&slot.workers).values().cloned().collect();
            for spec in specs {
                let msg = load_message(&spec, self.config.load_timeout, &handle.link);
                let res =
                    tokio::time::timeout(self.config.load_timeout, handle.link.request(msg)).await;
                if !matches!(&res, Ok(Ok(Message::LoadResult(r))) if r.ok) {
                    handle.link.release_lanes(&spec.id);
                }
                let err = match res {
                    Ok(Ok(Message::LoadResult(r))) if r.ok => None,
                    Ok(Ok(Message::LoadResult(r))) => Some(r.error),
                    Ok(Ok(other)) => Some(format!("unexpected answer {other:?}")),
                    Ok(Err(e)) => Some(format!("host went away: {e}")),
                    Err(_) => Some("timed out".to_string()),
                };
                if let Some(error) = err {
                    tracing::error!(worker = %spec.id, host = %host_id, "reload after respawn failed: {error}");
                    let _ = self
                        .notify
                        .send(PoolEvent::ReloadFailed {
                            worker_id: spec.id.clone(),
                            error,
                        })
                        .await;
                }
            }
            slot.current.send_replace(Some(handle.clone()));

            let status = self.serve_host(&slot, &handle, &mut spawned).await;
            slot.current.send_replace(None);
            spawned.link.peer_died();

            let in_flight = lock(&handle.in_flight).clone();
            let records: Vec<CrashRecord> = spawned
                .region
                .crash_slots()
                .iter()
                .filter_map(|s| s.read())
                .collect();
            let placed: Vec<String> = lock(&slot.workers).keys().cloned().collect();
            let (crash, forged) = attribute(&records, &in_flight, &placed, &status);
            let mut violation = lock(&handle.violation).clone();
            if violation.is_none() {
                violation =
                    forged.or_else(|| header_violation(&spawned.region, &self.config.spawn));
            }
            let reclaimed = lock(&handle.reclaim).take();
            let report = Arc::new(DeathReport {
                host_id: host_id.clone(),
                pid: spawned.pid,
                status: status.clone(),
                crash,
                reclaimed,
                violation,
                in_flight,
            });
            let _ = death_tx.send(Some(report.clone()));

            let orderly = slot.closed.is_cancelled() && status == ExitStatus::Exited(0);
            if orderly {
                tracing::info!(host = %host_id, pid = spawned.pid, "host stopped");
                break;
            }
            slot.crashes.fetch_add(1, Ordering::Relaxed);
            let culprit = report
                .crash
                .as_ref()
                .map(|c| (c.worker_id.as_str(), c.msg_id))
                .or(report.reclaimed.as_ref().map(|(w, m)| (w.as_str(), *m)));
            let signal = match (&report.crash, &status) {
                (Some(c), _) => Some(c.signal),
                (None, ExitStatus::Signaled(s)) => Some(*s),
                _ => None,
            };
            tracing::error!(host = %host_id, pid = spawned.pid, culprit = ?culprit, "{}", report.cause());
            // Quarantine before anything awaits: a retry must not find the worker still placed.
            let quarantined = self.count_crashes(&slot, &report);
            let syscall = report.forbidden_syscall();
            let (events, id, pid, cause) = (
                self.events.clone(),
                host_id.clone(),
                spawned.pid,
                report.cause(),
            );
            let culprit = culprit.map(|(w, m)| (w.to_owned(), m));
            lifecycle.then(async move {
                let culprit = culprit.as_ref().map(|(w, m)| (w.as_str(), *m));
                events
                    .host_crashed(&id, pid, signal, culprit, &cause, syscall.as_deref())
                    .await;
            });
            if !quarantined.is_empty() {
                // The quarantine's own lifecycle events follow the crash they come from.
                lifecycle.flush().await;
            }
            for ev in quarantined {
                let _ = self.notify.send(ev).await;
            }
            if slot.closed.is_cancelled() {
                break;
            }
            failures = next_failures(
                failures,
                started.elapsed() >= self.config.stable_after,
                report.has_culprit(),
            );
            let delay = respawn_delay(
                self.config.respawn_backoff_base,
                self.config.respawn_backoff_max,
                failures,
            );
            if lock(&slot.workers).is_empty() && slot.dedicated {
                break;
            }
            // Not `sleep(ZERO)`: Tokio's timer would still wait for its next tick (up to 1 ms).
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = slot.closed.cancelled() => break,
                }
            }
        }
        lifecycle.flush().await;
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, &slot));
    }

    /// The engine's warm standby host if one is idle (then a new standby is spawned in the
    /// background), else a new host.
    async fn adopt_or_spawn(
        &self,
        host_id: &str,
        engine: EngineKind,
        limits: &WorkerLimits,
    ) -> Result<spawn::SpawnedHost, SpawnError> {
        if !limits.is_empty() {
            // A standby runs under the engine's limits; this host needs the worker's own.
            return self.spawner.spawn_with(host_id, engine, limits).await;
        }
        if let Some(h) = self.standbys.adopt(engine).await {
            tracing::info!(host = %host_id, pid = h.pid, "adopted the standby host");
            return Ok(h);
        }
        self.spawner.spawn(host_id, engine).await
    }

    /// Serves one host until its process exits; returns how it ended.
    ///
    /// What the host sends unasked is screened here ([`guard`]): a log line or gateway call
    /// must name a worker of this slot and be within its worker's rate. Gateway calls wait for
    /// a free place (`HOST_GATEWAY_CALLS_IN_FLIGHT`) and for room in the pool's bounded event
    /// channel; while they wait this host's frames stay in its ring, so a flooding host fills
    /// its own ring and blocks itself, not the daemon.
    async fn serve_host(
        &self,
        slot: &Arc<Slot>,
        handle: &Arc<HostHandle>,
        spawned: &mut spawn::SpawnedHost,
    ) -> ExitStatus {
        let mut stats = tokio::time::interval(self.config.stats_interval);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                status = spawned.exit.wait() => return status,
                _ = handle.kill.notified() => spawned.exit.kill(),
                _ = slot.closed.cancelled() => return stop_host(spawned).await,
                frame = spawned.frames.recv() => match frame {
                    Some(Message::ProcessResult(r)) => {
                        if !handle.late_result(&r) {
                            slot.violations.add();
                            self.guard.violation(&handle.host_id, handle.pid, &format!(
                                "a result for message {} of worker '{}', which is not in flight there",
                                r.msg_id, truncated(&r.worker_id)));
                        }
                    }
                    Some(Message::Stats(s)) => slot.rss.store(s.rss_bytes, Ordering::Relaxed),
                    Some(Message::Pong { .. }) | Some(Message::Ready(_)) => {}
                    Some(Message::Log(log)) => self.screen_log(slot, handle, &log),
                    Some(Message::GatewayCall(call)) => {
                        let permit = tokio::select! {
                            p = handle.gateway_slots.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => continue,
                            },
                            status = spawned.exit.wait() => return status,
                            _ = handle.kill.notified() => { spawned.exit.kill(); return spawned.exit.wait().await; }
                            _ = slot.closed.cancelled() => return stop_host(spawned).await,
                        };
                        if let Some(ev) = self.screen_call(slot, handle, call, permit) {
                            tokio::select! {
                                sent = self.notify.send(ev) => if sent.is_err() {
                                    tracing::debug!(host = %handle.host_id, "the runtime is gone; gateway call dropped");
                                },
                                status = spawned.exit.wait() => return status,
                                _ = handle.kill.notified() => { spawned.exit.kill(); return spawned.exit.wait().await; }
                                _ = slot.closed.cancelled() => return stop_host(spawned).await,
                            }
                        }
                    }
                    Some(other) => {
                        tracing::debug!(host = %handle.host_id, kind = other.kind(), "unexpected frame from host; ignored");
                    }
                    None => {
                        // The reader thread ended: the ring is closed. A host that broke the
                        // protocol may go on running: end it, and say why.
                        if let Some(LinkError::HostMisbehaved { reason }) = spawned.link.dead_reason() {
                            tracing::error!(host = %handle.host_id, pid = handle.pid, "host broke the protocol ({reason}); killing it");
                            lock(&handle.violation).get_or_insert(reason);
                            spawned.exit.kill();
                        }
                        return spawned.exit.wait().await;
                    }
                },
                _ = stats.tick() => {
                    // Skipped when the ring is full: a sample is not worth waiting for.
                    let _ = spawned.link.try_send(&Message::StatsRequest { request_id: next_request_id() });
                }
            }
        }
    }

    /// Logs a plugin's line if it names a worker of this host and is within its rate.
    fn screen_log(&self, slot: &Arc<Slot>, handle: &Arc<HostHandle>, log: &Log) {
        if !slot.carries(&log.worker_id) {
            slot.violations.add();
            self.guard.violation(
                &handle.host_id,
                handle.pid,
                &format!("a log line of worker '{}'", truncated(&log.worker_id)),
            );
            return;
        }
        if self.guard.allow(&log.worker_id, Rated::LogLine) {
            guard::emit_log(&handle.host_id, log);
        }
    }

    /// A gateway call the runtime should serve, or `None` when it was refused here (then an
    /// error reply is on its way to the plugin, holding `permit` until it is sent).
    fn screen_call(
        &self,
        slot: &Arc<Slot>,
        handle: &Arc<HostHandle>,
        call: GatewayCall,
        permit: OwnedSemaphorePermit,
    ) -> Option<PoolEvent> {
        let refusal = if !slot.carries(&call.worker_id) {
            slot.violations.add();
            let what = format!("a gateway call of worker '{}'", truncated(&call.worker_id));
            self.guard.violation(&handle.host_id, handle.pid, &what);
            format!(
                "refused: worker '{}' is not on this host",
                truncated(&call.worker_id)
            )
        } else if !self.guard.allow(&call.worker_id, Rated::GatewayCall) {
            format!(
                "refused: over WORKER_GATEWAY_CALLS_PER_SECOND ({} per second); retry later",
                self.config.limits.gateway_calls_per_second
            )
        } else {
            return Some(PoolEvent::GatewayCall {
                host: handle.clone(),
                call,
                permit,
            });
        };
        let host = handle.clone();
        let reply = crate::gateway::refusal(call.call_id, &refusal);
        tokio::spawn(async move {
            host.reply(reply).await;
            drop(permit);
        });
        None
    }

    /// Renders the host-input counters (rates, stderr) for `/metrics`.
    pub fn render_guard_metrics(&self, out: &mut String) {
        self.guard.render_prometheus(out);
    }

    /// Counts the death against its workers; returns the quarantines to announce.
    fn count_crashes(&self, slot: &Arc<Slot>, report: &DeathReport) -> Vec<PoolEvent> {
        let mut quarantined = Vec::new();
        let now = Instant::now();
        let window = self.config.crash_loop_window;
        for worker in report.charged_workers() {
            let count = {
                let mut times = lock(&self.crash_times);
                let q = times.entry(worker.clone()).or_default();
                q.push_back(now);
                while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                    q.pop_front();
                }
                q.len()
            };
            if count >= self.config.crash_loop_count
                && lock(&slot.workers).remove(&worker).is_some()
            {
                lock(&self.placement).remove(&worker);
                lock(&self.crash_times).remove(&worker);
                let reason = format!(
                    "worker crashed its host {count} times within {window:?}; quarantined ({})",
                    report.cause()
                );
                tracing::error!(worker = %worker, "{reason}");
                quarantined.push(PoolEvent::Quarantined {
                    worker_id: worker,
                    reason,
                });
            }
        }
        quarantined
    }
}

/// Who a dead host's crash slots may blame. The slots are host memory, so a plugin can write
/// them: a record counts only if its worker is placed on this host and its message was in
/// flight there (or, with message 0, no call was in flight: a crash while loading). A record
/// that fails that is forged: it is ignored and named as a protocol violation. With no
/// usable record, a host killed by a signal while exactly one call was in flight is blamed on
/// that call (a plugin that blocked the crash handler's signal or removed its alternate stack
/// still pays for its own crash).
fn attribute(
    records: &[CrashRecord],
    in_flight: &HashMap<u64, String>,
    placed: &[String],
    status: &ExitStatus,
) -> (Option<CrashRecord>, Option<String>) {
    let mut forged = None;
    for r in records {
        let on_host = placed.contains(&r.worker_id);
        let running = if r.msg_id == 0 {
            in_flight.is_empty()
        } else {
            in_flight.get(&r.msg_id) == Some(&r.worker_id)
        };
        if r.worker_id.is_empty() || (on_host && running) {
            return (Some(r.clone()), None);
        }
        forged.get_or_insert_with(|| {
            format!(
                "its crash slot names worker '{}' and message {}, which were not running on it (a forged crash report; ignored)",
                r.worker_id, r.msg_id
            )
        });
    }
    // Only a fault the host raised itself; not a kill (the supervisor's own, for a violation
    // or a reclaim, or anyone else's), and not when a forged record was found.
    let fault = matches!(
        status,
        ExitStatus::Signaled(s) if [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS, libc::SIGABRT].contains(s)
    );
    if let (true, ExitStatus::Signaled(sig), 1, None) = (fault, status, in_flight.len(), &forged)
        && let Some((msg_id, worker)) = in_flight.iter().next()
    {
        return (
            Some(CrashRecord {
                signal: *sig,
                tid: 0,
                worker_id: worker.clone(),
                msg_id: *msg_id,
                fault_addr: 0,
            }),
            forged,
        );
    }
    (None, forged)
}

/// A ring header the host rewrote (sizes, versions, the supervisor's closed flag): the
/// supervisor never reads those fields back for its own use, so this is only for naming why a
/// host ended.
fn header_violation(region: &wm_shared::ring::Region, spawn: &SpawnConfig) -> Option<String> {
    let got = region.header_snapshot();
    let want = spawn.ring;
    if got.ring_bytes != want.ring_bytes as u64 || got.max_frame != want.max_frame as u64 {
        return Some(format!(
            "it rewrote the ring header (ring_bytes {} / max_frame {}, written as {} / {})",
            got.ring_bytes, got.max_frame, want.ring_bytes, want.max_frame
        ));
    }
    let want_lanes = if want.lanes == 0 {
        (0, 0)
    } else {
        (want.lanes as u32, want.lane_bytes as u32)
    };
    if (got.lanes, got.lane_bytes) != want_lanes {
        return Some(format!(
            "it rewrote the ring header's lanes ({} of {} bytes, written as {} of {})",
            got.lanes, got.lane_bytes, want_lanes.0, want_lanes.1
        ));
    }
    if got.magic_ok && got.supervisor_closed {
        return Some("it set the supervisor's closed flag in the ring header".to_string());
    }
    if !got.magic_ok {
        return Some("it overwrote the ring header's magic and versions".to_string());
    }
    if !got.indices_ok {
        return Some("it scribbled the ring indices (reader and writer disagree)".to_string());
    }
    None
}

/// Appends per-host metrics (restarts, crashes, RSS, in-flight) in the Prometheus format.
pub fn render_prometheus(hosts: &[HostInfo], out: &mut String) {
    use std::fmt::Write as _;
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&HostInfo) -> u64,
    );
    let series: [Series; 5] = [
        (
            "workmanager_host_restarts_total",
            "counter",
            "Respawns of a host slot.",
            |h| u64::from(h.restarts),
        ),
        (
            "workmanager_host_crashes_total",
            "counter",
            "Host deaths other than orderly shutdowns.",
            |h| h.crashes,
        ),
        (
            "workmanager_host_rss_bytes",
            "gauge",
            "Resident set size of the host process.",
            |h| h.rss_bytes,
        ),
        (
            "workmanager_host_in_flight",
            "gauge",
            "Calls running on the host.",
            |h| h.in_flight,
        ),
        (
            "workmanager_host_identity_violations_total",
            "counter",
            "Frames in which the host spoke for a worker it does not carry, or answered a call not in flight.",
            |h| h.identity_violations,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for h in hosts {
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",engine=\"{}\",isolation=\"{}\"}} {}",
                h.id,
                h.engine.mime(),
                h.isolation.as_str(),
                get(h)
            );
        }
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

/// The consecutive-failure count that sets the next respawn delay ([`backoff`]).
///
/// It grows with deaths nobody can be charged with (a host that cannot stay up by itself: a
/// broken runtime, the OOM killer, a kill from outside) and starts again after a host stayed up
/// `stable_after` or died of a known culprit call. A culprit is dealt with by retries and the
/// crash-loop quarantine; making the host back off for it would only stall the healthy workers
/// sharing the host (up to 30 s per crash once the count has grown, in the chaos soak).
pub fn next_failures(failures: u32, stayed_up: bool, has_culprit: bool) -> u32 {
    if stayed_up || has_culprit {
        1
    } else {
        failures.saturating_add(1)
    }
}

/// The delay before respawning a host after `failures` consecutive deaths ([`next_failures`]):
/// the first death of a series respawns at once (like kubelet's first restart: a warm standby
/// makes that cheap, and a death charged to a culprit is bounded by the crash-loop quarantine,
/// not by waiting), then `base`, doubling per further death, capped.
pub fn respawn_delay(base: Duration, max: Duration, failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        backoff(base, max, failures - 1)
    }
}

/// Publishes a slot's lifecycle events one after the other in background tasks, so the
/// respawn does not wait for their durable commits; `flush` waits for all queued so far.
#[derive(Default)]
struct LifecycleQueue {
    last: Option<tokio::task::JoinHandle<()>>,
}

impl LifecycleQueue {
    /// Queues `publish` after everything queued before it.
    fn then(&mut self, publish: impl std::future::Future<Output = ()> + Send + 'static) {
        let before = self.last.take();
        self.last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            publish.await;
        }));
    }

    async fn flush(&mut self) {
        if let Some(last) = self.last.take() {
            let _ = last.await;
        }
    }
}

/// Exponential backoff: `base * 2^(n-1)`, capped.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
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
