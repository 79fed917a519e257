//! The dispatcher: moves events from the bus through a worker's host and settles each one.
//!
//! One task per running worker consumes its topic; `maxConcurrency` calls run at once (one
//! keeps per-worker order). For each event: stamp the worker's config, take the group lock,
//! call the host with the worker's deadline, then publish the reply, retry, or dead-letter as
//! `rules::classify` and the pool's [`crate::pool::Verdict`] say.
//!
//! **Invariant:** every delivery ends settled (replied, dead-lettered) or is left unsettled on
//! purpose (worker stopped or quarantined, daemon shutting down) so the bus delivers it again.
//! Nothing is dropped here.

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

use crate::bus::{Bus, Consumer, DeadLetterReason, Delivery, Outcome, dead_letter};
use crate::events::{ErrorType, Events, Lifecycle, WorkerRef};
use crate::pool::{CallOutcome, Pool, Verdict, next_request_id};
use crate::runtime::{InvokeError, WorkerSpec};
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
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(group.to_string()).or_default().clone()
    }
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
}

enum Step {
    Settled,
    /// Left for the bus to deliver again (stop, quarantine, shutdown).
    Unsettled,
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
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningWorker>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Consumer>> {
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let this = Arc::clone(self);
        let spec = Arc::new(spec);
        let t = tasks.clone();
        tasks.spawn(async move { this.consume(spec, consumer, cancel, park, t).await });
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
            tasks.spawn(async move {
                let span = tracing::info_span!("message", worker = %spec.id, seq = delivery.seq, id = %delivery.event.id);
                let _ = tracing::Instrument::instrument(this.handle(&spec, delivery, &cancel), span).await;
                drop(permit);
            });
        }
    }

    /// Handles one delivery; what is deliberately left unsettled goes back to the bus at once,
    /// so the next consumer of the topic (or this worker after `start`) gets it.
    async fn handle(&self, spec: &WorkerSpec, d: Delivery, cancel: &CancellationToken) -> Step {
        let step = self.handle_inner(spec, &d, cancel).await;
        if let Step::Unsettled = step {
            self.bus.release(vec![d]);
        }
        step
    }

    async fn handle_inner(
        &self,
        spec: &WorkerSpec,
        d: &Delivery,
        cancel: &CancellationToken,
    ) -> Step {
        let mut event = d.event.clone();
        let skipped = stamp_config(&mut event, &spec.config);
        if !skipped.is_empty() {
            tracing::warn!(keys = ?skipped, "config keys that are not CloudEvents attribute names were not stamped");
        }
        let bytes = event.to_flatbuffer();
        // Attempts survive redelivery: an event left unsettled by a quarantine or a daemon
        // crash comes back with `deliveries` counted by the bus, so a poison message cannot
        // loop forever across restarts (each earlier hand-out counts as one charged attempt).
        let mut charged: u32 = d.deliveries.saturating_sub(1);
        loop {
            if cancel.is_cancelled() {
                return Step::Unsettled;
            }
            let Some(host) = self.pool.host_for(&spec.id).await else {
                return Step::Unsettled;
            };
            let group_lock = match &spec.group {
                Some(g) => {
                    let lock = self.groups.get(g);
                    if lock.try_lock().is_err() {
                        self.metrics.lock_contended(g);
                    }
                    Some(lock.lock_owned().await)
                }
                None => None,
            };
            let msg_id = next_request_id();
            let started = Instant::now();
            let outcome = host
                .call(&spec.id, msg_id, bytes.clone(), spec.message_timeout)
                .await;
            drop(group_lock);
            let failure = match outcome {
                CallOutcome::Done(result) => {
                    self.metrics
                        .observe(&spec.id, &spec.topic, started.elapsed());
                    match classify(&result) {
                        Classified::Success { reply, surfaced } => {
                            if let Some(err) = surfaced {
                                self.failed(spec, ErrorType::WorkerError, &err).await;
                            }
                            match reply {
                                None => {}
                                Some(mut reply) => {
                                    match route_reply(&event, &mut reply, &spec.id, || {
                                        uuid::Uuid::new_v4().to_string()
                                    }) {
                                        Ok(topic) => {
                                            if let Err(e) =
                                                self.bus.publish(&topic, vec![reply]).await
                                            {
                                                // The reply could not be stored: leave the input
                                                // unsettled so it is processed again, rather
                                                // than lose the answer.
                                                tracing::error!(topic = %topic, "publishing the reply failed: {e}");
                                                return Step::Unsettled;
                                            }
                                        }
                                        Err(why) => {
                                            self.failed(spec, ErrorType::InvalidResponse, &why)
                                                .await;
                                            self.metrics.failed(&spec.id, &spec.topic);
                                            self.settle(d.seq, Outcome::Replied).await;
                                            return Step::Settled;
                                        }
                                    }
                                }
                            }
                            self.metrics.processed(&spec.id, &spec.topic);
                            self.settle(d.seq, Outcome::Replied).await;
                            return Step::Settled;
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
                    host.reclaim_after(self.config.timeout_grace, &spec.id, msg_id);
                    self.timed_out(spec, &msg).await;
                    self.dead_letter(spec, d, ErrorType::Timeout, &msg, charged + 1)
                        .await;
                    return Step::Settled;
                }
                CallOutcome::HostDied(report) => match report.verdict(msg_id) {
                    Verdict::Bystander => {
                        tracing::info!(host = %report.host_id, "host died under another worker's call; requeued without charge");
                        continue;
                    }
                    Verdict::Culprit | Verdict::Unattributed => (ErrorType::Crash, report.cause()),
                },
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
                    self.dead_letter(spec, d, ErrorType::ProcessFailed, &msg, charged + 1)
                        .await;
                    return Step::Settled;
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
            };
            let (error_type, message) = failure;
            charged += 1;
            self.metrics.failed(&spec.id, &spec.topic);
            self.failed(spec, error_type, &message).await;
            if charged > self.config.retry_attempts {
                self.dead_letter(spec, d, error_type, &message, charged)
                    .await;
                return Step::Settled;
            }
            let delay = retry_delay(self.config.retry_base_delay, charged);
            tracing::info!(
                attempt = charged,
                ?delay,
                "retrying after {error_type:?}: {message}"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return Step::Unsettled,
            }
        }
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
                Some(g) => Some(self.groups.get(g).lock_owned().await),
                None => None,
            };
            host.call(
                &spec.id,
                msg_id,
                event.to_flatbuffer(),
                spec.message_timeout,
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
                host.reclaim_after(self.config.timeout_grace, &spec.id, msg_id);
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

    async fn dead_letter(
        &self,
        spec: &WorkerSpec,
        d: &Delivery,
        error_type: ErrorType,
        message: &str,
        attempts: u32,
    ) {
        let reason = DeadLetterReason {
            error_type,
            message: message.to_string(),
            attempts,
            worker_id: Some(spec.id.clone()),
        };
        match dead_letter(self.bus.as_ref(), &d.topic, &d.event, &reason).await {
            Ok(_) => {
                self.metrics.dead_lettered(&spec.id, &spec.topic);
                self.settle(
                    d.seq,
                    Outcome::DeadLettered {
                        reason: format!("{error_type:?}: {message}"),
                    },
                )
                .await;
            }
            Err(e) => {
                // Could not store the dead letter: keep the original rather than lose it.
                tracing::error!("dead-lettering failed, the event stays queued: {e}");
            }
        }
    }

    async fn settle(&self, seq: u64, outcome: Outcome) {
        if let Err(e) = self.bus.settle(seq, outcome).await {
            tracing::error!(
                seq,
                "settling failed (the event will be delivered again): {e}"
            );
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
