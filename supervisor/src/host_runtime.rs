//! The real [`Runtime`]: the host pool plus the dispatcher plus plugin gateway calls.
//!
//! REST handlers call this through the `Runtime` trait; it never sees HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wm_shared::sync::Locked as _;

use tokio::sync::mpsc;
use wm_shared::CloudEvent;

use crate::bus::{BoxFuture, Bus};
use crate::dispatcher::{DispatchConfig, Dispatcher, StatusSink};
use crate::events::{ErrorType, Events, Heartbeat, Lifecycle, WorkerRef};
use crate::gateway::Gateway;
use crate::pool::{Pool, PoolConfig, PoolEvent};
use crate::runtime::{
    EngineInfo, HostInfo, InvokeError, Runtime, RuntimeError, WorkerRuntimeInfo, WorkerSpec,
};

/// Pool + dispatcher.
pub struct HostRuntime {
    pool: Arc<Pool>,
    dispatcher: Arc<Dispatcher>,
    events: Arc<Events>,
    status: Arc<dyn StatusSink>,
    specs: Mutex<HashMap<String, WorkerSpec>>,
    engines: Vec<EngineInfo>,
    stop_deadline: Duration,
}

impl HostRuntime {
    /// Builds the runtime and starts the task that handles what hosts send unasked.
    pub fn new(
        pool_config: PoolConfig,
        dispatch_config: DispatchConfig,
        bus: Arc<dyn Bus>,
        events: Arc<Events>,
        status: Arc<dyn StatusSink>,
        gateway: Gateway,
        engines: Vec<EngineInfo>,
    ) -> std::io::Result<Arc<HostRuntime>> {
        let heartbeat = dispatch_config.heartbeat;
        let (pool, pool_events) = Pool::new(pool_config, events.clone())?;
        let dispatcher = Dispatcher::new(
            dispatch_config,
            bus,
            pool.clone(),
            events.clone(),
            status.clone(),
        );
        let rt = Arc::new(HostRuntime {
            pool,
            dispatcher,
            events,
            status,
            specs: Mutex::new(HashMap::new()),
            engines,
            stop_deadline: Duration::from_secs(10),
        });
        if let Some(period) = heartbeat {
            tokio::spawn(Self::heartbeats(Arc::downgrade(&rt), period));
        }
        tokio::spawn(Self::pool_events(
            Arc::downgrade(&rt),
            pool_events,
            Arc::new(gateway),
        ));
        Ok(rt)
    }

    /// Publishes a heartbeat per started worker every `period` until the runtime is dropped.
    async fn heartbeats(rt: std::sync::Weak<HostRuntime>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(rt) = rt.upgrade() else { return };
            let specs: Vec<WorkerSpec> = rt.specs().values().cloned().collect();
            for spec in specs {
                let counts = rt.dispatcher.metrics.counts(&spec.id);
                let status = if rt.dispatcher.is_running(&spec.id) {
                    "RUNNING"
                } else {
                    "ERROR"
                };
                let hb = Heartbeat {
                    status,
                    processed: counts.processed,
                    failed: counts.failed,
                    dead_lettered: counts.dead_lettered,
                    in_flight: rt.pool.in_flight_of(&spec.id),
                    host_pid: rt.pool.host_pid(&spec.id),
                };
                let w = WorkerRef {
                    id: &spec.id,
                    group: spec.group.as_deref(),
                    topic: &spec.topic,
                };
                rt.events.heartbeat(w, &hb).await;
            }
        }
    }

    /// The dispatcher's metrics (for `/metrics`).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    fn specs(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerSpec>> {
        self.specs.locked()
    }

    async fn pool_events(
        rt: std::sync::Weak<HostRuntime>,
        mut rx: mpsc::Receiver<PoolEvent>,
        gateway: Arc<Gateway>,
    ) {
        while let Some(ev) = rx.recv().await {
            let Some(rt) = rt.upgrade() else { break };
            match ev {
                PoolEvent::GatewayCall { host, call, permit } => {
                    // Bounded: the pool hands out at most HOST_GATEWAY_CALLS_IN_FLIGHT permits
                    // per host; the permit is released once the reply is sent.
                    let gateway = gateway.clone();
                    tokio::spawn(async move {
                        let reply = gateway.handle(call).await;
                        host.reply(reply).await;
                        drop(permit);
                    });
                }
                PoolEvent::Quarantined { worker_id, reason } => {
                    rt.fail_worker(&worker_id, ErrorType::CrashLoop, &reason)
                        .await;
                }
                PoolEvent::ReloadFailed { worker_id, error } => {
                    let msg = format!("reloading after a host restart failed: {error}");
                    rt.pool_forget(&worker_id).await;
                    rt.fail_worker(&worker_id, ErrorType::LoadFailed, &msg)
                        .await;
                }
            }
        }
    }

    async fn pool_forget(&self, worker_id: &str) {
        let _ = self.pool.unload(worker_id).await;
    }

    /// Worker -> ERROR: stop calling it, park its consumer (its queue stays in the bus), record,
    /// announce.
    async fn fail_worker(&self, worker_id: &str, error_type: ErrorType, message: &str) {
        self.dispatcher.park_worker(worker_id);
        self.status.worker_failed(worker_id, error_type, message);
        let spec = self.specs().get(worker_id).cloned();
        if let Some(spec) = spec {
            self.events
                .worker(
                    Lifecycle::Failed,
                    WorkerRef {
                        id: &spec.id,
                        group: spec.group.as_deref(),
                        topic: &spec.topic,
                    },
                    Some((error_type, message)),
                )
                .await;
        }
    }
}

fn to_runtime_error(e: crate::pool::PoolError) -> RuntimeError {
    use crate::pool::PoolError;
    match e {
        PoolError::Load { worker_id, message } => RuntimeError::LoadFailed {
            worker: worker_id,
            message,
        },
        PoolError::NotPlaced(w) => RuntimeError::NotLoaded(w),
        PoolError::ShuttingDown => RuntimeError::Unavailable("the daemon is shutting down".into()),
        PoolError::Spawn(e) => RuntimeError::Unavailable(format!("no host could be started: {e}")),
        e @ PoolError::TooManyHosts { .. } => RuntimeError::Unavailable(e.to_string()),
        PoolError::HostGone { worker_id, step } => RuntimeError::LoadFailed {
            message: format!("the host went away during {step}; it is being restarted, try again"),
            worker: worker_id,
        },
    }
}

impl Runtime for HostRuntime {
    fn start(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            // The API's start is idempotent: a running worker stays as it is.
            if self.dispatcher.is_running(&spec.id) && self.pool.is_placed(&spec.id) {
                return Ok(());
            }
            self.specs().insert(spec.id.clone(), spec.clone());
            let w = WorkerRef {
                id: &spec.id,
                group: spec.group.as_deref(),
                topic: &spec.topic,
            };
            self.events.worker(Lifecycle::Starting, w, None).await;
            if let Err(e) = self.pool.load(spec.clone()).await {
                let err = to_runtime_error(e);
                self.events
                    .worker(
                        Lifecycle::Failed,
                        w,
                        Some((ErrorType::LoadFailed, &err.to_string())),
                    )
                    .await;
                return Err(err);
            }
            self.events.worker(Lifecycle::Online, w, None).await;
            Dispatcher::start_worker(&self.dispatcher, spec.clone());
            Ok(())
        })
    }

    fn reload(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            let running = self.dispatcher.is_running(&spec.id);
            self.pool
                .load(spec.clone())
                .await
                .map_err(to_runtime_error)?;
            self.specs().insert(spec.id.clone(), spec.clone());
            if running {
                // New spec (new package path) for later messages; in-flight calls finish first.
                Dispatcher::start_worker(&self.dispatcher, spec);
            }
            Ok(())
        })
    }

    fn stop(&self, worker_id: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let worker_id = worker_id.to_string();
        Box::pin(async move {
            let spec = self.specs().get(&worker_id).cloned();
            let wref = spec.as_ref().map(|s| WorkerRef {
                id: &s.id,
                group: s.group.as_deref(),
                topic: &s.topic,
            });
            if let Some(w) = wref {
                self.events.worker(Lifecycle::Stopping, w, None).await;
            }
            self.dispatcher
                .stop_worker(&worker_id, self.stop_deadline)
                .await;
            self.pool
                .unload(&worker_id)
                .await
                .map_err(to_runtime_error)?;
            self.specs().remove(&worker_id);
            if let Some(w) = wref {
                self.events.worker(Lifecycle::Stopped, w, None).await;
            }
            Ok(())
        })
    }

    fn invoke(
        &self,
        worker_id: &str,
        event: CloudEvent,
    ) -> BoxFuture<'_, Result<Option<CloudEvent>, InvokeError>> {
        let spec = self.specs().get(worker_id).cloned();
        let worker_id = worker_id.to_string();
        Box::pin(async move {
            let Some(spec) = spec else {
                return Err(InvokeError {
                    error_type: ErrorType::LoadFailed,
                    message: format!("worker {worker_id} is not running; start it first"),
                });
            };
            self.dispatcher.invoke(&spec, event).await
        })
    }

    fn worker_info(&self, worker_id: &str) -> Option<WorkerRuntimeInfo> {
        let placed = self.pool.is_placed(worker_id);
        let counts = self.dispatcher.metrics.counts(worker_id);
        if !placed && counts == Default::default() {
            return None;
        }
        Some(WorkerRuntimeInfo {
            host_pid: self.pool.host_pid(worker_id),
            processed: counts.processed,
            failed: counts.failed,
            dead_lettered: counts.dead_lettered,
            in_flight: self.pool.in_flight_of(worker_id),
        })
    }

    fn hosts(&self) -> Vec<HostInfo> {
        self.pool.hosts()
    }

    fn standby_hosts(&self) -> Vec<crate::pool::standby::StandbyInfo> {
        self.pool.standby_hosts()
    }

    fn engines(&self) -> Vec<EngineInfo> {
        self.engines.clone()
    }

    fn validate(&self, mut spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            if spec.engine != wm_shared::package::EngineKind::CSharpSource {
                return Ok(());
            }
            // A validate-only load: the host compiles and finds the entry, creates nothing.
            spec.package.entry_point =
                wm_shared::package::csharp_source::VALIDATE_ONLY_ENTRY.to_owned();
            let id = spec.id.clone();
            let result = self.pool.load(spec).await.map_err(to_runtime_error);
            if let Err(e) = self.pool.unload(&id).await {
                tracing::warn!(worker = %id, "unloading a validation load: {e}");
            }
            result
        })
    }

    fn render_metrics(&self, out: &mut String) {
        self.dispatcher.metrics.render_prometheus(out);
        crate::pool::render_prometheus(&self.pool.hosts(), out);
        self.pool.render_guard_metrics(out);
    }

    fn shutdown(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.dispatcher.stop_all(deadline).await;
            self.pool.shutdown(deadline).await;
        })
    }
}
