//! `workmanager run PKG --event FILE`: one event through a package in a real sandboxed host,
//! without a daemon (what `sam local invoke` is to Lambda), for authors' tests and CI.
//!
//! It validates the package with the daemon's rules, extracts it into a private temporary
//! data directory, starts a host with the daemon's sandbox plan (the same `pool` code, so the
//! same layers, seccomp filter and crash attribution), loads the worker, calls it once, and
//! prints the reply on stdout; the worker's log lines go to stderr as they come. A crash is
//! reported with its cause and whether this call was the culprit. Nothing else runs: there
//! is no bus consumer, no registry, no network listener; gateway calls are answered with an
//! error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wm_shared::CloudEvent;
use wm_shared::package::{self, EngineKind, Limits, Target};
use wm_shared::protocol::GatewayReply;

use super::client::{CliError, exit};
use super::output::{Output, print_json};
use crate::bus::{Bus, SqliteBus, SqliteBusOptions};
use crate::config::{Config, ServeArgs};
use crate::dispatcher::rules::{Classified, classify};
use crate::events::Events;
use crate::pool::{CallOutcome, Pool, PoolEvent, Verdict};
use crate::runtime::{Isolation, WorkerSpec};

/// `workmanager run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The package file.
    pub package: PathBuf,
    /// The event: a CloudEvent in structured JSON (`-` reads stdin).
    #[arg(long, short = 'e', value_name = "FILE")]
    pub event: PathBuf,
    /// The engine's MIME type; guessed from the layout when left out.
    #[arg(long, value_name = "MIME")]
    pub mime_type: Option<String>,
    /// Deadline of the call, seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// A config entry stamped onto the event as an extension (repeatable), as a worker's
    /// `config` would be.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// `json` prints `{"ok", "reply", "error", "crash"}` on stdout.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Runs `workmanager run`.
pub fn run(a: RunArgs) -> Result<(), CliError> {
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::new(exit::FAILED, format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(a))
}

/// Worker log lines (and the pool's warnings) on stderr; `WORKMANAGER_LOG` overrides.
fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("WORKMANAGER_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,wm_supervisor::pool::guard=trace")
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn fail(message: impl Into<String>) -> CliError {
    CliError::new(exit::FAILED, message)
}

async fn run_async(a: RunArgs) -> Result<(), CliError> {
    let bytes = super::workers::read_file(&a.package, "package")?;
    let engine = match &a.mime_type {
        Some(m) => EngineKind::from_mime(m).ok_or_else(|| {
            CliError::usage(format!(
                "no engine for MIME type '{m}'; use application/x-native-dll or application/x-dotnet-dll"
            ))
        })?,
        None => super::pack::guess_engine(&bytes),
    };
    let raw = super::workers::read_file(&a.event, "event")?;
    let value: Value = serde_json::from_slice(&raw).map_err(|e| {
        CliError::usage(format!(
            "the event file {} is not JSON: {e}",
            a.event.display()
        ))
    })?;
    let mut event = CloudEvent::from_json_value(&value).map_err(|e| {
        CliError::usage(format!(
            "the event file {} is not a valid CloudEvent: {e}",
            a.event.display()
        ))
    })?;
    for kv in &a.config {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--config '{kv}' is not KEY=VALUE")))?;
        event
            .set_extension_if_absent(k, v)
            .map_err(|e| CliError::usage(format!("--config '{k}': {e}")))?;
    }

    let limits = Limits::default();
    let info = package::inspect(&bytes, engine, &Target::current(), &limits)
        .map_err(super::pack::invalid)?;
    for w in &info.warnings {
        eprintln!("workmanager: warning: {w}");
    }

    // A private data directory, as the daemon's: hosts traverse it under HOST_UID.
    let temp = tempfile::Builder::new()
        .prefix("workmanager-run-")
        .tempdir()
        .map_err(|e| fail(format!("cannot make a temporary directory: {e}")))?;
    let data_dir = temp.path().join("data");
    let config = Config::load(&ServeArgs {
        listen: vec!["127.0.0.1:0".to_owned()],
        data_dir: Some(data_dir.clone()),
        ..ServeArgs::default()
    })
    .map_err(|e| CliError::usage(format!("{e}")))?;
    std::fs::create_dir_all(data_dir.join("packages"))
        .map_err(|e| fail(format!("cannot create {}: {e}", data_dir.display())))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o711));
    }
    // The daemon's order: the sandbox plan (which checks that HOST_UID can reach the data
    // directory) before the data directory is made private but traversable.
    let host_runner =
        crate::serve::host_runner_path(&config).map_err(|e| fail(format!("{e:#}")))?;
    if !host_runner.exists() {
        return Err(fail(format!(
            "the host-runner binary is not at {}; build it (cargo build -p workmanager-host-runner) or set HOST_RUNNER_PATH",
            host_runner.display()
        )));
    }
    let dotnet_root = std::env::var_os("DOTNET_ROOT").map(PathBuf::from);
    let plan = crate::sandbox_plan::plan(&config, &host_runner, dotnet_root.as_deref());
    for w in &plan.warnings {
        tracing::warn!("sandbox layer missing: {w}");
    }
    if let Some(e) = plan.unmet_requirement() {
        return Err(fail(format!("{e}; refusing to run the host")));
    }
    crate::sandbox_plan::prepare_data_dir(&data_dir)
        .map_err(|e| fail(format!("cannot prepare {}: {e}", data_dir.display())))?;
    let package_dir = package::extract(&bytes, &info, &data_dir.join("packages"), &limits)
        .map_err(super::pack::invalid)?;
    // Readable by the host's uid (HOST_UID) whatever mode the engine's extraction used (Python
    // source is written 0600), and still removable with the temporary directory.
    crate::package_guard::make_removable(&package_dir)
        .map_err(|e| fail(format!("cannot open up {}: {e}", package_dir.display())))?;

    let mut pool_config = crate::serve::pool_config(&config, host_runner, plan.settings.clone());
    // One call: a crash must not be followed by respawns and reloads of this worker.
    pool_config.crash_loop_count = 1;

    // One event in a temporary directory: no WAL cycle to preallocate (BUS_WAL_PREALLOCATE).
    let bus_options = SqliteBusOptions {
        wal_preallocate: false,
        ..SqliteBusOptions::default()
    };
    let bus: Arc<dyn Bus> = SqliteBus::open(&data_dir, bus_options)
        .map_err(|e| fail(format!("cannot open a bus in {}: {e}", data_dir.display())))?;
    let events = Arc::new(Events::new(bus.clone()));
    let (pool, mut pool_events) = Pool::new(pool_config, events)
        .map_err(|e| fail(format!("cannot start the host pool: {e}")))?;
    // No gateway here: calls are answered with an error the plugin sees.
    tokio::spawn(async move {
        while let Some(ev) = pool_events.recv().await {
            if let PoolEvent::GatewayCall { host, call, permit } = ev {
                host.reply(GatewayReply {
                    call_id: call.call_id,
                    status: 1,
                    payload: Vec::new(),
                    error: "the gateway is not available in `workmanager run`".to_owned(),
                })
                .await;
                drop(permit);
            }
        }
    });

    let worker_id = uuid::Uuid::new_v4().to_string();
    let timeout = Duration::from_secs(a.timeout.max(1));
    let spec = WorkerSpec {
        id: worker_id.clone(),
        engine,
        topic: "workmanager.run".to_owned(),
        group: None,
        config: Vec::new(),
        isolation: Isolation::Dedicated,
        message_timeout: timeout,
        max_concurrency: 1,
        package_dir,
        package: info.clone(),
        limits: Default::default(),
    };
    let result = call_once(&pool, spec, &worker_id, event, timeout).await;
    pool.shutdown(Duration::from_secs(5)).await;
    bus.close().await;
    let report = result?;
    if a.output == Output::Json {
        print_json(&report.json);
    } else {
        match &report.json["reply"] {
            Value::Null => {}
            reply => print_json(reply),
        }
        if let Some(e) = report.json["error"].as_str()
            && report.json["crash"].is_null()
        {
            eprintln!("workmanager: {e}");
        }
        if let Some(c) = report.json["crash"]["cause"].as_str() {
            eprintln!("workmanager: crash: {c}");
            if report.json["crash"]["culprit"] == true {
                eprintln!("workmanager: culprit: this call ({})", info.library_path);
            }
        }
        if report.json["ok"] == true && report.json["reply"].is_null() {
            eprintln!("workmanager: the worker returned no reply");
        }
    }
    if report.json["ok"] == true {
        Ok(())
    } else {
        Err(CliError::new(
            exit::WORKER_FAILED,
            "the worker failed (see above)",
        ))
    }
}

struct Report {
    json: Value,
}

async fn call_once(
    pool: &Arc<Pool>,
    spec: WorkerSpec,
    worker_id: &str,
    event: CloudEvent,
    timeout: Duration,
) -> Result<Report, CliError> {
    if let Err(e) = pool.load(spec).await {
        return Ok(Report {
            json: json!({"ok": false, "reply": null, "error": format!("load failed: {e}"), "crash": null}),
        });
    }
    let host = pool
        .host_for(worker_id)
        .await
        .ok_or_else(|| fail("the worker was loaded but has no host; this is a bug"))?;
    let msg_id = crate::pool::next_request_id();
    let outcome = host
        .call(worker_id, msg_id, event.to_flatbuffer(), timeout)
        .await;
    let json = match outcome {
        CallOutcome::Done(r) => match classify(&r) {
            Classified::Success { reply, surfaced } => json!({
                "ok": true,
                "reply": reply.map(|e| e.to_json_value()),
                "error": surfaced,
                "crash": null,
                "elapsedMs": r.elapsed_ns as f64 / 1e6,
            }),
            Classified::Failure {
                error_type,
                message,
            } => json!({
                "ok": false,
                "reply": null,
                "error": format!("{}: {message}", error_type.as_str()),
                "crash": null,
            }),
        },
        CallOutcome::HostDied(report) => json!({
            "ok": false,
            "reply": null,
            "error": "crash: the host died during the call",
            "crash": {
                "cause": report.cause(),
                "culprit": report.verdict(msg_id) == Verdict::Culprit,
                "signal": report.crash.as_ref().map(|c| crate::pool::signal_name(c.signal)),
                "forbiddenSyscall": report.forbidden_syscall(),
            },
        }),
        CallOutcome::TimedOut => json!({
            "ok": false,
            "reply": null,
            "error": format!("timeout: no answer within {} s (--timeout)", timeout.as_secs()),
            "crash": null,
        }),
        CallOutcome::SendFailed { reason, .. } => json!({
            "ok": false, "reply": null, "error": format!("the event could not be sent: {reason}"), "crash": null,
        }),
        CallOutcome::Forged(why) => json!({
            "ok": false, "reply": null, "error": why, "crash": null,
        }),
    };
    Ok(Report { json })
}
