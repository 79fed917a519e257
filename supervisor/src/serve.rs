//! `workmanager serve`: puts the parts together.
//!
//! The control plane (`Daemon`) is built with the real runtime (`HostRuntime`: host pool +
//! dispatcher + gateway); the durable bus is opened next to the registry and its topic routes
//! are served behind the same middleware; readiness (recovery done) releases the bus's
//! no-consumer drops; control events become lifecycle events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use wm_shared::ring::RingConfig;

use crate::bus::{Bus, Durability, SqliteBus, SqliteBusOptions};
use crate::config::Config;
use crate::control::{ControlEvent, ControlEventKind, DepsEvent};
use crate::dispatcher::{DispatchConfig, StatusSink};
use crate::events::{Events, Lifecycle, WorkerRef};
use crate::gateway::{Gateway, GatewayBackend, StateLimits};
use crate::host_runtime::HostRuntime;
use crate::pool::guard::HostLimits;
use crate::pool::stderr::StderrLimits;
use crate::pool::{PoolConfig, SpawnConfig};
use crate::registry::{Registry, RegistryGateway, RegistryStatus};
use crate::runtime::{EngineInfo, Runtime};
use crate::sync::lock;
use crate::{Daemon, api};

/// Runs the daemon until `token` is cancelled (SIGTERM/SIGINT).
pub async fn serve(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let host_runner = host_runner_path(&config)?;
    // Hosts must not be able to read the daemon's memory, environment or descriptors through
    // /proc/<pid>, whatever uid they run as: a non-dumpable process's /proc files belong to
    // root and need CAP_SYS_PTRACE (which hosts never have).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let dotnet_root = std::env::var_os("DOTNET_ROOT").map(PathBuf::from);
    let plan = crate::sandbox_plan::plan(&config, &host_runner, dotnet_root.as_deref());
    for w in &plan.warnings {
        tracing::warn!(target: "workmanager::sandbox", "sandbox layer missing: {w}");
    }
    if let Some(e) = plan.unmet_requirement() {
        anyhow::bail!(
            "{e}; refusing to run hosts (remove the layer from SANDBOX_REQUIRE to run without it)"
        );
    }
    crate::sandbox_plan::prepare_data_dir(&config.data_dir).with_context(|| {
        format!(
            "preparing the data directory {} for hosts",
            config.data_dir.display()
        )
    })?;
    let pool = pool_config(&config, host_runner.clone(), plan.settings.clone());
    // Cluster mode: the bus is on NATS JetStream, connected before anything else starts.
    let (shared_bus, nats, cluster_locks) = match config.cluster.bus {
        crate::cluster::Backend::Embedded => (None, None, None),
        crate::cluster::Backend::JetStream => {
            let (bus, conn, locks) = crate::cluster::open_bus(&config).await?;
            (Some(bus), Some(conn), Some(locks))
        }
    };
    let dispatch = DispatchConfig {
        cluster_locks,
        retry_attempts: config.retry_attempts,
        retry_base_delay: config.retry_base_delay,
        timeout_grace: config.timeout_reclaim_grace,
        heartbeat: config.heartbeat,
        group_lock_max_retries: config.group_lock_max_retries,
        group_lock_retry_base_delay: config.group_lock_retry_base_delay,
    };
    let engines = crate::engines::engines(&host_runner);
    let gateway_url = config.gateway_url.clone();
    let gateway_timeout = config.message_timeout;
    let parts = Parts {
        shared_bus,
        data_dir: config.data_dir.clone(),
        bus_options: SqliteBusOptions {
            durability: if config.bus_fsync {
                Durability::Fsync
            } else {
                Durability::Os
            },
            max_topic_backlog: config.topic_max_backlog,
            commit_delay: config.bus_commit_delay,
            join_window: config.bus_join_window,
            inline: config.bus_inline_commit,
            wal_preallocate: config.bus_wal_preallocate,
            retention_events: config.topic_retention_events,
            retention: config.topic_retention,
            dead_letter_max_events: config.dead_letter_max_events,
            ..SqliteBusOptions::default()
        },
        pool,
        dispatch,
        gateway_url,
        gateway_timeout,
        max_event_bytes: crate::pool::guard::max_event_bytes(config.ring_max_frame_bytes),
        state_limits: StateLimits {
            max_keys: config.host_input.state_max_keys,
            max_value_bytes: usize::try_from(config.host_input.state_max_value_bytes)
                .unwrap_or(usize::MAX),
        },
        engines,
    };

    // `Daemon::new` takes the data directory's lock first, then calls this to build the
    // runtime: the bus is opened here so that a second daemon on the same directory is refused
    // by that lock, with its message, before it touches the bus.
    let built: Arc<Mutex<Option<Built>>> = Arc::default();
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    // REGISTRY_BACKEND=jetstream: the shared registry over the local one (docs/cluster.md).
    let (open_store, registry_changes) = crate::cluster::shared_registry::store_opener(&config);
    let mut daemon = {
        let (built, failure) = (built.clone(), failure.clone());
        Daemon::with_store(
            config.clone(),
            open_store,
            move |registry: &Registry| match build(registry, parts) {
                Ok(b) => {
                    let rt = b.runtime.clone();
                    *lock(&built) = Some(b);
                    rt as Arc<dyn Runtime>
                }
                Err(e) => {
                    *lock(&failure) = Some(e);
                    Arc::new(crate::runtime::Unavailable) as Arc<dyn Runtime>
                }
            },
        )?
    };
    if let Some(e) = lock(&failure).take() {
        return Err(e);
    }
    let Some(Built {
        bus,
        events,
        registry,
        runtime: _,
    }) = lock(&built).take()
    else {
        anyhow::bail!("the runtime was not built (Daemon::new did not call make_runtime)");
    };
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    hold_registered_topics(&registry, bus_dyn.as_ref())?;
    if let Some(conn) = &nats {
        let members = crate::cluster::Membership::start(
            conn,
            &config.cluster.nats.prefix,
            config.cluster.nats.replicas,
            crate::cluster::instance_id(),
            config.data_dir.clone(),
            token.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("opening the members bucket on NATS: {e}"))?;
        daemon.control().set_membership(members.clone());
        if let Some(changes) = registry_changes {
            crate::cluster::shared_registry::start(
                &daemon, conn, &config, changes, members, &bus_dyn, &token,
            )
            .await?;
        }
    }
    if let Some(conn) = nats {
        daemon.control().add_health_check(
            "nats",
            Box::new(move || {
                if conn.is_connected() {
                    Ok("connected to NATS".to_owned())
                } else {
                    Err("not connected to NATS; reconnecting (events wait in JetStream)".to_owned())
                }
            }),
        );
    }

    daemon.add_routes(api::topics::router(
        bus_dyn.clone(),
        api::topics::TopicLimits {
            max_body_bytes: api::body_limit(
                &config,
                api::BodyClass::Event,
                "/v1/topics/{topic}/events",
            ),
            max_event_bytes: crate::pool::guard::max_event_bytes(config.ring_max_frame_bytes),
            ..api::topics::TopicLimits::default()
        },
        token.clone(),
    ));
    {
        // Dead-letter list and requeue (docs/operations.md, "Dead letters").
        let requeues = Arc::new(api::dead_letters::RequeueMetrics::default());
        daemon.add_routes(api::dead_letters::router(bus_dyn.clone(), requeues.clone()));
        daemon.add_metrics(move |out| requeues.render_prometheus(out));
    }
    {
        // Audit records go to the bus too (best effort, in order of the changes).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::audit::AuditRecord>();
        daemon.audit().add_sink(Box::new(move |r| {
            let _ = tx.send(r.clone());
        }));
        let bus = bus_dyn.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let ev = crate::audit::audit_event(&r);
                if let Err(e) = bus.publish(crate::audit::AUDIT_TOPIC, vec![ev]).await {
                    tracing::warn!(error = %e, "cannot publish an audit event; it is in the log only");
                }
            }
        });
    }
    {
        let bus = bus.clone();
        daemon.add_metrics(move |out| bus.render_prometheus(out));
    }
    daemon.add_metrics(move |out| plan.render_prometheus(out));

    // Until recovery has brought the workers back, events wait for them instead of being
    // dropped for want of a consumer.
    let mut ready = daemon.control().ready_watch();
    {
        let bus = bus.clone();
        tokio::spawn(async move {
            loop {
                if *ready.borrow_and_update() {
                    bus.set_ready();
                    return;
                }
                if ready.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let listener_events = events.clone();
    let listener_bus = bus_dyn.clone();
    daemon
        .control()
        .add_listener(Box::new(move |ev: &ControlEvent| {
            // Called right after the registry changed, before the API answers: a topic is
            // held from the moment its worker exists until it is deleted.
            match ev.kind {
                ControlEventKind::Registered => listener_bus.hold(&ev.worker_id, Some(&ev.topic)),
                ControlEventKind::Deleted => listener_bus.hold(&ev.worker_id, None),
                _ => {}
            }
            if let ControlEventKind::Registered = ev.kind {
                let events = listener_events.clone();
                let ev = ev.clone();
                tokio::spawn(async move {
                    let w = WorkerRef {
                        id: &ev.worker_id,
                        group: ev.group.as_deref(),
                        topic: &ev.topic,
                    };
                    events.worker(Lifecycle::Registered, w, None).await;
                });
            }
        }));

    // Dependency install steps, published in the order they happen.
    let (deps_tx, mut deps_rx) = tokio::sync::mpsc::unbounded_channel::<DepsEvent>();
    let deps_events = events.clone();
    tokio::spawn(async move {
        while let Some(ev) = deps_rx.recv().await {
            deps_events
                .dependencies(ev.step(), &ev.worker_id, &ev.data())
                .await;
        }
    });
    daemon
        .control()
        .add_deps_listener(Box::new(move |ev: &DepsEvent| {
            let _ = deps_tx.send(ev.clone());
        }));

    let result = daemon.run(token).await;
    bus.close().await;
    result.map_err(Into::into)
}

/// Tells the bus which topics have a registered worker (whatever its status): their events
/// wait for it across `stop`, `ERROR` and restarts (also with `WORKER_RECOVERY_ON_START`
/// off) instead of being dropped for want of a consumer.
fn hold_registered_topics(registry: &Registry, bus: &dyn Bus) -> anyhow::Result<()> {
    let workers = registry
        .store()
        .list_workers()
        .context("listing the registered workers for the bus")?;
    for w in &workers {
        bus.hold(&w.id, Some(&w.topic));
    }
    Ok(())
}

/// What `make_runtime` builds besides the runtime itself.
struct Built {
    bus: Arc<dyn Bus>,
    events: Arc<Events>,
    registry: Registry,
    runtime: Arc<HostRuntime>,
}

/// What `build` turns into the runtime, collected from the config before `Daemon::new`.
struct Parts {
    /// The JetStream bus in cluster mode; `None`: the embedded bus in the data directory.
    shared_bus: Option<Arc<dyn Bus>>,
    data_dir: PathBuf,
    bus_options: SqliteBusOptions,
    pool: PoolConfig,
    dispatch: DispatchConfig,
    gateway_url: Option<String>,
    gateway_timeout: Duration,
    state_limits: StateLimits,
    max_event_bytes: usize,
    engines: Vec<EngineInfo>,
}

fn build(registry: &Registry, p: Parts) -> anyhow::Result<Built> {
    let cluster_mode = p.shared_bus.is_some();
    let bus: Arc<dyn Bus> = match p.shared_bus {
        Some(bus) => bus,
        None => SqliteBus::open(&p.data_dir, p.bus_options)
            .with_context(|| format!("opening the bus in {}", p.data_dir.display()))?,
    };
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    let events = Events::new(bus_dyn.clone());
    let events = Arc::new(if cluster_mode {
        events.with_instance(crate::cluster::instance_id())
    } else {
        events
    });
    let status: Arc<dyn StatusSink> = Arc::new(RegistryStatus(registry.clone()));
    let backend: Arc<dyn GatewayBackend> = Arc::new(RegistryGateway(registry.clone()));
    let gateway = Gateway::new(bus_dyn.clone(), backend, p.gateway_url, p.gateway_timeout)
        .with_state_limits(p.state_limits)
        .with_max_event_bytes(p.max_event_bytes);
    let runtime = HostRuntime::new(
        p.pool,
        p.dispatch,
        bus_dyn,
        events.clone(),
        status,
        gateway,
        p.engines,
    )
    .context("starting the host pool")?;
    Ok(Built {
        bus,
        events,
        registry: registry.clone(),
        runtime,
    })
}

pub(crate) fn host_runner_path(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(p) = &config.host_runner_path {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("finding the workmanager binary")?;
    let dir = exe
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(dir.join("host-runner"))
}

pub(crate) fn pool_config(
    config: &Config,
    host_runner: PathBuf,
    sandbox: crate::pool::spawn::SandboxSettings,
) -> PoolConfig {
    let ring_bytes = usize::try_from(config.ring_bytes).unwrap_or(1 << 20);
    let max_frame = usize::try_from(config.ring_max_frame_bytes).unwrap_or(ring_bytes / 4);
    PoolConfig {
        spawn: SpawnConfig {
            host_runner,
            ring: RingConfig {
                ring_bytes,
                max_frame,
                lanes: config.ring_lanes as usize,
                lane_bytes: usize::try_from(config.ring_lane_bytes).unwrap_or(64 << 10),
            },
            rlimit_as: config.host_rlimit_as,
            gc_heap_hard_limit: config.host_dotnet_gc_heap_hard_limit,
            rlimit_nofile: 1024,
            dotnet_root: std::env::var_os("DOTNET_ROOT").map(PathBuf::from),
            ready_timeout: Duration::from_secs(20),
            extra_args: Vec::new(),
            sandbox,
            stderr: StderrLimits {
                line_max_bytes: config.host_input.stderr_line_max_bytes as usize,
                lines_per_second: config.host_input.stderr_lines_per_second,
            },
            python_blocked_modules: config.python_blocked_modules.clone(),
            link_reader: config.host_link_reader,
        },
        shared_hosts_per_engine: config.shared_hosts_per_engine as usize,
        respawn_backoff_base: config.host_respawn_backoff,
        respawn_backoff_max: Duration::from_secs(30),
        stable_after: Duration::from_secs(60),
        crash_loop_count: config.crash_loop_max_crashes as usize,
        crash_loop_window: config.crash_loop_window,
        load_timeout: Duration::from_secs(60),
        stats_interval: Duration::from_secs(5),
        limits: HostLimits {
            log_lines_per_second: config.host_input.log_lines_per_second,
            gateway_calls_per_second: config.host_input.gateway_calls_per_second,
            gateway_in_flight_per_host: config.host_input.gateway_calls_in_flight as usize,
            max_hosts: config.max_hosts as usize,
        },
        standby: config.host_standby,
    }
}
