//! The dispatcher: moves events from the bus through a worker's host and settles each one.
//!
//! One task per running worker consumes its topic; `maxConcurrency` calls run at once (one
//! keeps per-worker order). For each event: stamp the worker's config, take the group lock
//! (bounded: `GROUP_LOCK_MAX_RETRIES`), call the host with the worker's deadline, then
//! complete it (reply or dead letter stored and the input settled in one transaction,
//! [`Bus::complete`]), or retry, as `rules::classify` and the pool's [`crate::pool::Verdict`]
//! say.
//!
//! Lanes are pipelined: a call's permit is given back as soon as the plugin answered and its
//! completion is queued, before that completion is durable, so the next call overlaps the
//! group commit. Completions are queued in the order the calls finished and commit in that
//! order; the input stays stored until its completion commits (at-least-once); a completion
//! that fails to commit gives its delivery back to the bus, which hands it out again.
//!
//! **Invariant:** every delivery ends completed (replied, dead-lettered) or is given back to
//! the bus on purpose (worker stopped or quarantined, daemon shutting down, a failed commit)
//! so the bus delivers it again. Nothing is dropped here. `deliveries` counts attempts: a
//! delivery given back without a call is given back with its count lowered again.

mod complete;
pub mod metrics;
pub mod rules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wm_shared::CloudEvent;

use crate::bus::{
    Bus, Consumer, DeadLetterReason, Delivery, Outcome, dead_letter_event, dead_letter_topic,
};
use crate::events::{ErrorType, Events, Lifecycle, WorkerRef};
use crate::pool::{CallOutcome, HostHandle, Pool, Verdict, next_request_id};
use crate::runtime::{InvokeError, WorkerSpec};
use crate::sync::lock;
use complete::{Queued, finish, settled};
pub use metrics::DispatchMetrics;
use rules::{Classified, classify, retry_delay, route_reply, stamp_config};

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Retries after the first attempt (`WORKER_RETRY_ATTEMPTS`, default 3).
    pub retry_attempts: u32,
    /// `WORKER_RETRY_BASE_DELAY_MS`, default 200 ms; doubles per retry.
    pub retry_base_delay: Duration,
    /// How long a timed-out call may keep running before its host is killed and respawned.
    pub timeout_grace: Duration,
    /// How often each started worker's heartbeat is published (`None`: never).
    pub heartbeat: Option<Duration>,
    /// Retries to take a taken group lock (`GROUP_LOCK_MAX_RETRIES`) before the attempt fails
    /// with `lock_contention` (then retried, finally dead-lettered, like any failure).
    pub group_lock_max_retries: u32,
    /// `GROUP_LOCK_RETRY_BASE_DELAY_MS`: the wait before retry n is base·2^n.
    pub group_lock_retry_base_delay: Duration,
    /// Cluster mode: group locks are also leases shared with the other daemons.
    pub cluster_locks: Option<Arc<crate::cluster::ClusterLocks>>,
}

/// A held group lock: this daemon's mutex, and in cluster mode the group's lease.
struct GroupGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    _lease: Option<crate::cluster::Lease>,
}

/// Where the dispatcher reports a worker's fall into ERROR (the registry, in the daemon).
pub trait StatusSink: Send + Sync + 'static {
    fn worker_failed(&self, worker_id: &str, error_type: ErrorType, message: &str);
}

struct RunningWorker {
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Set before `cancel` when the worker goes to ERROR: its consumer is parked, not dropped.
    park: Arc<AtomicBool>,
}

/// In-process group locks: at most one call at a time across the workers of a group.
#[derive(Default)]
struct GroupLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GroupLocks {
    fn get(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(group.to_string())
            .or_default()
            .clone()
    }
}

/// Why a group lock was not taken.
enum LockWait {
    /// Still taken after every retry.
    Contended(String),
    /// The worker is stopping.
    Cancelled,
}

/// The dispatcher.
pub struct Dispatcher {
    config: DispatchConfig,
    bus: Arc<dyn Bus>,
    pool: Arc<Pool>,
    events: Arc<Events>,
    status: Arc<dyn StatusSink>,
    pub metrics: Arc<DispatchMetrics>,
    running: Mutex<HashMap<String, RunningWorker>>,
    /// Consumers of workers in ERROR (timeout, crash loop): still registered with the bus, so
    /// their topic's events stay queued (not dropped as "no worker listens") until `start`.
    parked: Mutex<HashMap<String, Consumer>>,
    groups: GroupLocks,
    /// Calls that timed out and may still run in their host, by worker: `start` reclaims
    /// them before the worker gets another call.
    hung: Mutex<HashMap<String, (Arc<HostHandle>, u64)>>,
}

/// How the handling of one delivery ends.
#[allow(clippy::large_enum_variant)] // one per delivery, moved once
enum Step {
    /// Complete it: record `outcome` and store `publish` (a reply or a dead letter) with it.
    Complete {
        outcome: Outcome,
        publish: Option<(String, CloudEvent)>,
    },
    /// Give it back for the bus to deliver again (stop, quarantine, shutdown); `attempted`:
    /// the plugin was called (or the attempt was charged) this time.
    Unsettled { attempted: bool },
    /// The bus took it back to deliver again after the retry delay (`Bus::retry_later`).
    RetryLater,
}

impl Dispatcher {
    pub fn new(
        config: DispatchConfig,
        bus: Arc<dyn Bus>,
        pool: Arc<Pool>,
        events: Arc<Events>,
        status: Arc<dyn StatusSink>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            config,
            bus,
            pool,
            events,
            status,
            metrics: Arc::new(DispatchMetrics::default()),
            running: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            groups: GroupLocks::default(),
            hung: Mutex::new(HashMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningWorker>> {
        lock(&self.running)
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Consumer>> {
        lock(&self.parked)
    }

    /// Starts consuming the worker's topic (replacing an earlier consumer of the same worker,
    /// and taking over its parked consumer, queue included, if it was in ERROR).
    pub fn start_worker(self: &Arc<Self>, spec: WorkerSpec) {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let park = Arc::new(AtomicBool::new(false));
        if let Some(old) = self.running().insert(
            spec.id.clone(),
            RunningWorker {
                cancel: cancel.clone(),
                tasks: tasks.clone(),
                park: park.clone(),
            },
        ) {
            old.cancel.cancel();
        }
        let parked = self.parked().remove(&spec.id);
        let consumer = parked.unwrap_or_else(|| self.bus.consume(&spec.topic, &spec.id));
        let hung = lock(&self.hung).remove(&spec.id);
        let this = Arc::clone(self);
        let spec = Arc::new(spec);
        let t = tasks.clone();
        tasks.spawn(async move {
            if let Some((host, msg_id)) = hung {
                this.reclaim_hung(&spec.id, &host, msg_id, &cancel).await;
            }
            this.consume(spec, consumer, cancel, park, t).await
        });
    }

    /// A worker that timed out is started again: its hung call must not keep its lane (the
    /// next call would queue behind it and time out too), so the host is reclaimed now rather
    /// than after `TIMEOUT_RECLAIM_GRACE_SECONDS`, and calls wait until it is gone.
    async fn reclaim_hung(
        &self,
        worker_id: &str,
        host: &Arc<HostHandle>,
        msg_id: u64,
        cancel: &CancellationToken,
    ) {
        if !host.is_running(msg_id) {
            return;
        }
        tracing::warn!(worker = %worker_id, host = %host.host_id, msg_id, "start: the call that timed out still runs; reclaiming its host first");
        host.reclaim_after(Duration::ZERO, worker_id, msg_id);
        tokio::select! {
            _ = host.died() => {}
            _ = cancel.cancelled() => {}
            // The call may also end by itself meanwhile.
            _ = async {
                while host.is_running(msg_id) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => {}
        }
    }

    /// The worker goes to ERROR: stop calling it but keep its consumer, so events for it stay
    /// queued in the bus until `start` (DESIGN.md §4: the queue is kept, not lost).
    pub fn park_worker(&self, worker_id: &str) {
        if let Some(r) = self.running().remove(worker_id) {
            r.park.store(true, Ordering::SeqCst);
            r.cancel.cancel();
        }
    }

    /// Stops consuming; in-flight calls get up to `deadline` to finish (what is still running
    /// then stays unsettled and is delivered again later).
    pub async fn stop_worker(&self, worker_id: &str, deadline: Duration) {
        // An explicit stop unsubscribes: a parked consumer goes too.
        self.parked().remove(worker_id);
        let running = self.running().remove(worker_id);
        if let Some(r) = running {
            r.cancel.cancel();
            r.tasks.close();
            let _ = tokio::time::timeout(deadline, r.tasks.wait()).await;
        }
    }

    /// Stops every worker (daemon shutdown).
    pub async fn stop_all(&self, deadline: Duration) {
        let all: Vec<RunningWorker> = self.running().drain().map(|(_, r)| r).collect();
        for r in &all {
            r.cancel.cancel();
            r.tasks.close();
        }
        let _ = tokio::time::timeout(deadline, async {
            for r in &all {
                r.tasks.wait().await;
            }
        })
        .await;
    }

    pub fn is_running(&self, worker_id: &str) -> bool {
        self.running().contains_key(worker_id)
    }

    async fn consume(
        self: Arc<Self>,
        spec: Arc<WorkerSpec>,
        mut consumer: Consumer,
        cancel: CancellationToken,
        park: Arc<AtomicBool>,
        tasks: TaskTracker,
    ) {
        self.consume_until_cancelled(&spec, &mut consumer, &cancel, &tasks)
            .await;
        if park.load(Ordering::SeqCst) {
            tracing::info!(worker = %spec.id, "worker in ERROR: consumer parked, its queue is kept");
            self.parked().insert(spec.id.clone(), consumer);
        }
    }

    async fn consume_until_cancelled(
        self: &Arc<Self>,
        spec: &Arc<WorkerSpec>,
        consumer: &mut Consumer,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let permits = Arc::new(Semaphore::new(spec.max_concurrency.max(1) as usize));
        // One task awaits the lanes' completions, in the order they were queued: a group
        // commit answers many at once, so this is one wake-up per commit, not one per event.
        let (queued, mut completions) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        {
            let (this, spec, cancel, t) = (
                Arc::clone(self),
                Arc::clone(spec),
                cancel.clone(),
                tasks.clone(),
            );
            tasks.spawn(async move {
                let pause = this.config.retry_base_delay;
                while let Some(q) = completions.recv().await {
                    if settled(&this.bus, q, pause, &cancel, &t).await
                        == complete::Finished::DeadLettered
                    {
                        this.metrics.dead_lettered(&spec.id, &spec.topic);
                    }
                }
            });
        }
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = cancel.cancelled() => break,
            };
            let delivery = tokio::select! {
                d = consumer.recv() => match d { Some(d) => d, None => break },
                _ = cancel.cancelled() => break,
            };
            let this = Arc::clone(self);
            let spec = Arc::clone(spec);
            let cancel = cancel.clone();
            let queued = queued.clone();
            tasks.spawn(async move {
                let span = tracing::info_span!("message", worker = %spec.id, seq = delivery.seq, id = %delivery.event.id,
                    otel.name = %format!("dispatch {}", delivery.topic), otel.kind = "consumer");
                // The dispatch continues the trace the event carries (`traceparent`).
                crate::telemetry::continue_from_event(&span, &delivery.event);
                tracing::Instrument::instrument(this.handle(&spec, delivery, &cancel, permit, &queued), span).await;
            });
        }
    }

    /// Handles one delivery and queues its completion (for the worker's completion task to
    /// await); what is deliberately left unsettled goes back to the bus at once, so the next
    /// consumer of the topic (or this worker after `start`) gets it. The lane's `permit` is
    /// given back as soon as the completion is queued.
    async fn handle(
        &self,
        spec: &WorkerSpec,
        d: Delivery,
        cancel: &CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
        queued: &tokio::sync::mpsc::UnboundedSender<Queued>,
    ) {
        let step = self.handle_inner(spec, &d, cancel).await;
        if let Some(q) = finish(self.bus.as_ref(), d, step, permit) {
            // The completion task lives as long as any lane can send to it.
            if let Err(unsent) = queued.send(q) {
                let q = unsent.0;
                settled(
                    &self.bus,
                    q,
                    self.config.retry_base_delay,
                    cancel,
                    &TaskTracker::new(),
                )
                .await;
            }
        }
    }

    /// Takes the group lock: at once, or after up to `GROUP_LOCK_MAX_RETRIES` waits of
    /// `GROUP_LOCK_RETRY_BASE_DELAY_MS`·2^n (each contended attempt counted per group).
    async fn group_lock(
        &self,
        group: &str,
        cancel: &CancellationToken,
    ) -> Result<GroupGuard, LockWait> {
        let lock = self.groups.get(group);
        if let Some(g) = self.try_group_lock(group, &lock).await {
            return Ok(g);
        }
        self.metrics.lock_contended(group);
        let retries = self.config.group_lock_max_retries;
        for n in 0..retries {
            let delay = self
                .config
                .group_lock_retry_base_delay
                .saturating_mul(1u32 << n.min(16));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return Err(LockWait::Cancelled),
            }
            if let Some(g) = self.try_group_lock(group, &lock).await {
                return Ok(g);
            }
            self.metrics.lock_contended(group);
        }
        Err(LockWait::Contended(format!(
            "group lock '{group}' was still taken after {retries} retries (GROUP_LOCK_MAX_RETRIES, GROUP_LOCK_RETRY_BASE_DELAY_MS)"
        )))
    }

    /// One try: the local mutex, then (cluster mode) the group's lease.
    async fn try_group_lock(
        &self,
        group: &str,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> Option<GroupGuard> {
        let local = lock.clone().try_lock_owned().ok()?;
        let lease = match &self.config.cluster_locks {
            None => None,
            Some(c) => match c.try_acquire(group).await {
                Ok(Some(l)) => Some(l),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot reach the group lease bucket; counted as contended");
                    return None;
                }
            },
        };
        Some(GroupGuard {
            _local: local,
            _lease: lease,
        })
    }

    async fn handle_inner(
        &self,
        spec: &WorkerSpec,
        d: &Delivery,
        cancel: &CancellationToken,
    ) -> Step {
        // Without config to stamp, the host gets the bytes the bus stored (no re-encoding).
        // Borrowed when stored bytes are sent as is: each attempt copies them once for the ring.
        let stamped;
        let (event, bytes): (&CloudEvent, std::borrow::Cow<'_, [u8]>) = match &d.encoded {
            Some(encoded) if spec.config.is_empty() => (&d.event, encoded.as_slice().into()),
            _ => {
                let mut event = d.event.clone();
                let skipped = stamp_config(&mut event, &spec.config);
                if !skipped.is_empty() {
                    tracing::warn!(keys = ?skipped, "config keys that are not CloudEvents attribute names were not stamped");
                }
                let bytes = event.to_flatbuffer();
                stamped = event;
                (&stamped, bytes.into())
            }
        };
        // Attempts survive redelivery: an event left unsettled by a quarantine or a daemon
        // crash comes back with `deliveries` counted by the bus, so a poison message cannot
        // loop forever across restarts (each earlier attempt counts as one charged attempt).
        let mut charged: u32 = d.deliveries.saturating_sub(1);
        let mut attempted = false;
        loop {
            if cancel.is_cancelled() {
                return Step::Unsettled { attempted };
            }
            let Some(host) = self.pool.host_for(&spec.id).await else {
                return Step::Unsettled { attempted };
            };
            let group_lock = match &spec.group {
                Some(g) => match self.group_lock(g, cancel).await {
                    Ok(guard) => Ok(Some(guard)),
                    Err(LockWait::Cancelled) => return Step::Unsettled { attempted },
                    Err(LockWait::Contended(why)) => Err(why),
                },
                None => Ok(None),
            };
            attempted = true;
            let failure = match group_lock {
                Err(why) => (ErrorType::LockContention, why),
                Ok(group_lock) => {
                    let msg_id = next_request_id();
                    let started = Instant::now();
                    let call_span = tracing::info_span!("host.call", otel.kind = "client",
                        host.pid = host.pid, host.id = %host.host_id, worker.id = %spec.id, msg_id);
                    let outcome = tracing::Instrument::instrument(
                        host.call(&spec.id, msg_id, bytes.to_vec(), spec.message_timeout),
                        call_span,
                    )
                    .await;
                    drop(group_lock);
                    match outcome {
                        CallOutcome::Done(result) => {
                            self.metrics
                                .observe(&spec.id, &spec.topic, started.elapsed());
                            match classify(&result) {
                                Classified::Success { reply, surfaced } => {
                                    if let Some(err) = surfaced {
                                        self.failed(spec, ErrorType::WorkerError, &err).await;
                                    }
                                    return self.replied(spec, event, reply).await;
                                }
                                Classified::Failure {
                                    error_type,
                                    message,
                                } => (error_type, message),
                            }
                        }
                        CallOutcome::TimedOut => {
                            let msg = format!(
                                "message {} did not complete within {:?} (MESSAGE_HANDLING_TIMEOUT_SECONDS)",
                                d.event.id, spec.message_timeout
                            );
                            self.hung_call(spec, &host, msg_id);
                            self.timed_out(spec, &msg).await;
                            return self.dead_letter(
                                spec,
                                d,
                                ErrorType::Timeout,
                                &msg,
                                charged + 1,
                            );
                        }
                        CallOutcome::SendFailed {
                            reason,
                            too_large: true,
                        } => {
                            // No retry can ever carry it: dead-letter at once, the worker goes on.
                            let msg = format!(
                                "event {} cannot be sent to the worker: {reason}",
                                d.event.id
                            );
                            self.metrics.failed(&spec.id, &spec.topic);
                            self.failed(spec, ErrorType::ProcessFailed, &msg).await;
                            return self.dead_letter(
                                spec,
                                d,
                                ErrorType::ProcessFailed,
                                &msg,
                                charged + 1,
                            );
                        }
                        CallOutcome::SendFailed {
                            reason,
                            too_large: false,
                        } => (
                            ErrorType::ProcessFailed,
                            format!(
                                "event {} was not delivered to the host: {reason}",
                                d.event.id
                            ),
                        ),
                        CallOutcome::Forged(why) => (ErrorType::InvalidResponse, why),
                        CallOutcome::HostDied(report) => match report.verdict(msg_id) {
                            Verdict::Bystander => {
                                tracing::info!(host = %report.host_id, "host died under another worker's call; requeued without charge");
                                continue;
                            }
                            Verdict::Culprit | Verdict::Unattributed => {
                                (ErrorType::Crash, report.cause())
                            }
                        },
                    }
                }
            };
            let (error_type, message) = failure;
            charged += 1;
            self.metrics.failed(&spec.id, &spec.topic);
            self.failed(spec, error_type, &message).await;
            if charged > self.config.retry_attempts {
                return self.dead_letter(spec, d, error_type, &message, charged);
            }
            let delay = retry_delay(self.config.retry_base_delay, charged);
            if self.bus.retry_later(d, delay) {
                // Cluster mode: JetStream redelivers it after the delay, to any daemon.
                tracing::info!(
                    attempt = charged,
                    ?delay,
                    "retry handed to the bus after {error_type:?}: {message}"
                );
                return Step::RetryLater;
            }
            tracing::info!(
                attempt = charged,
                ?delay,
                "retrying after {error_type:?}: {message}"
            );
            let retry_span = tracing::info_span!("retry", attempt = charged, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error_type = ?error_type);
            let cancelled = tracing::Instrument::instrument(
                async {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = cancel.cancelled() => true,
                    }
                },
                retry_span,
            )
            .await;
            if cancelled {
                return Step::Unsettled { attempted };
            }
        }
    }

    /// The plugin answered: complete with its reply routed (`replytopic`, else its type).
    async fn replied(
        &self,
        spec: &WorkerSpec,
        event: &CloudEvent,
        reply: Option<CloudEvent>,
    ) -> Step {
        let publish = match reply {
            None => None,
            Some(mut reply) => {
                match route_reply(event, &mut reply, &spec.id, || {
                    uuid::Uuid::new_v4().to_string()
                }) {
                    Ok(topic) => {
                        // The reply continues the input's trace (docs/grpc.md, "Traces").
                        let span = tracing::info_span!("reply.publish", otel.kind = "producer", topic = %topic, id = %reply.id);
                        // A span that records nothing has no context to pass on.
                        if span.is_disabled()
                            || !crate::telemetry::inject_into_event(&span, &mut reply)
                        {
                            crate::telemetry::copy_trace_context(event, &mut reply);
                        }
                        Some((topic, reply))
                    }
                    Err(why) => {
                        self.failed(spec, ErrorType::InvalidResponse, &why).await;
                        self.metrics.failed(&spec.id, &spec.topic);
                        return Step::Complete {
                            outcome: Outcome::Replied,
                            publish: None,
                        };
                    }
                }
            }
        };
        self.metrics.processed(&spec.id, &spec.topic);
        Step::Complete {
            outcome: Outcome::Replied,
            publish,
        }
    }

    /// Remembers a call that timed out and may still run, and reclaims its host after the
    /// grace (or at the worker's next `start`, whichever comes first).
    fn hung_call(&self, spec: &WorkerSpec, host: &Arc<HostHandle>, msg_id: u64) {
        host.reclaim_after(self.config.timeout_grace, &spec.id, msg_id);
        lock(&self.hung).insert(spec.id.clone(), (Arc::clone(host), msg_id));
    }

    /// Runs one event through a worker once: no retries, no dead letter (`POST .../invoke`).
    pub async fn invoke(
        &self,
        spec: &WorkerSpec,
        mut event: CloudEvent,
    ) -> Result<Option<CloudEvent>, InvokeError> {
        let Some(host) = self.pool.host_for(&spec.id).await else {
            return Err(InvokeError {
                error_type: ErrorType::LoadFailed,
                message: format!(
                    "worker {} is not loaded on any host; start it first",
                    spec.id
                ),
            });
        };
        stamp_config(&mut event, &spec.config);
        let msg_id = next_request_id();
        let started = Instant::now();
        let outcome = {
            let _group = match &spec.group {
                Some(g) => match self.group_lock(g, &CancellationToken::new()).await {
                    Ok(guard) => Some(guard),
                    Err(LockWait::Contended(message)) => {
                        return Err(InvokeError {
                            error_type: ErrorType::LockContention,
                            message,
                        });
                    }
                    Err(LockWait::Cancelled) => {
                        return Err(InvokeError {
                            error_type: ErrorType::LockContention,
                            message: format!("the group lock '{g}' was not taken"),
                        });
                    }
                },
                None => None,
            };
            let call_span = tracing::info_span!("host.call", otel.kind = "client",
                host.pid = host.pid, host.id = %host.host_id, worker.id = %spec.id, msg_id);
            tracing::Instrument::instrument(
                host.call(
                    &spec.id,
                    msg_id,
                    event.to_flatbuffer(),
                    spec.message_timeout,
                ),
                call_span,
            )
            .await
        };
        match outcome {
            CallOutcome::Done(result) => {
                self.metrics
                    .observe(&spec.id, &spec.topic, started.elapsed());
                match classify(&result) {
                    Classified::Success {
                        reply: None,
                        surfaced: None,
                    } => Ok(None),
                    Classified::Success {
                        reply: Some(mut reply),
                        surfaced: None,
                    } => {
                        // Fill and check the reply exactly as for a published one.
                        route_reply(&event, &mut reply, &spec.id, || {
                            uuid::Uuid::new_v4().to_string()
                        })
                        .map_err(|message| InvokeError {
                            error_type: ErrorType::InvalidResponse,
                            message,
                        })?;
                        Ok(Some(reply))
                    }
                    Classified::Success {
                        surfaced: Some(message),
                        ..
                    } => Err(InvokeError {
                        error_type: ErrorType::WorkerError,
                        message,
                    }),
                    Classified::Failure {
                        error_type,
                        message,
                    } => Err(InvokeError {
                        error_type,
                        message,
                    }),
                }
            }
            CallOutcome::TimedOut => {
                let message = format!(
                    "the call did not complete within {:?}",
                    spec.message_timeout
                );
                self.hung_call(spec, &host, msg_id);
                self.timed_out(spec, &message).await;
                Err(InvokeError {
                    error_type: ErrorType::Timeout,
                    message,
                })
            }
            CallOutcome::HostDied(report) => Err(InvokeError {
                error_type: ErrorType::Crash,
                message: report.cause(),
            }),
            CallOutcome::SendFailed { reason, .. } => Err(InvokeError {
                error_type: ErrorType::ProcessFailed,
                message: format!("the event was not delivered to the host: {reason}"),
            }),
            CallOutcome::Forged(message) => Err(InvokeError {
                error_type: ErrorType::InvalidResponse,
                message,
            }),
        }
    }

    async fn failed(&self, spec: &WorkerSpec, error_type: ErrorType, message: &str) {
        self.events
            .worker(
                Lifecycle::Failed,
                worker_ref(spec),
                Some((error_type, message)),
            )
            .await;
    }

    /// The documented timeout semantics: `failed` event, worker -> ERROR, no more messages.
    async fn timed_out(&self, spec: &WorkerSpec, message: &str) {
        tracing::error!(worker = %spec.id, "{message}");
        self.failed(spec, ErrorType::Timeout, message).await;
        self.status
            .worker_failed(&spec.id, ErrorType::Timeout, message);
        self.park_worker(&spec.id);
    }

    /// Completes `d` as a dead letter on `<topic>-dead`.
    fn dead_letter(
        &self,
        spec: &WorkerSpec,
        d: &Delivery,
        error_type: ErrorType,
        message: &str,
        attempts: u32,
    ) -> Step {
        let reason = DeadLetterReason {
            error_type,
            message: message.to_string(),
            attempts,
            worker_id: Some(spec.id.clone()),
        };
        let mut dead = dead_letter_event(&d.topic, &d.event, &reason);
        let span = tracing::info_span!("dead_letter", otel.kind = "producer", topic = %dead_letter_topic(&d.topic), error_type = ?error_type, attempts);
        if !crate::telemetry::inject_into_event(&span, &mut dead) {
            crate::telemetry::copy_trace_context(&d.event, &mut dead);
        }
        Step::Complete {
            outcome: Outcome::DeadLettered {
                reason: format!("{error_type:?}: {message}"),
            },
            publish: Some((dead_letter_topic(&d.topic), dead)),
        }
    }
}

fn worker_ref(spec: &WorkerSpec) -> WorkerRef<'_> {
    WorkerRef {
        id: &spec.id,
        group: spec.group.as_deref(),
        topic: &spec.topic,
    }
}
