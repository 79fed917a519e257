//! The seam between the control plane (REST API, registry, recovery) and the part that runs
//! plugins (host pool + dispatcher).
//!
//! The control plane only ever talks to a [`Runtime`]; it never touches a ring or a host
//! process. The real implementation (the host pool and the dispatcher) lives in `pool/` and
//! `dispatcher/`. [`Unavailable`] is what a build without a host pool runs: it refuses to
//! start workers with a clear error, so everything else (create, list, tags, history, health)
//! works against it honestly.
//!
//! **Contract for implementors:**
//! - `start` of a worker that is already loaded returns `Ok(())` (the API's start is idempotent).
//! - status changes the runtime discovers by itself (a timeout, a crash loop) are written with
//!   [`crate::registry::Registry::set_status`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wm_shared::CloudEvent;

pub use crate::worker_limits::WorkerLimits;
pub use wm_shared::package::{EngineKind, PackageInfo};

/// Every engine, in the order `/v1/engines` lists them.
pub const ENGINES: [EngineKind; 5] = [
    EngineKind::Native,
    EngineKind::DotNet,
    EngineKind::CSharpSource,
    EngineKind::Python,
    EngineKind::PythonWheel,
];

/// The language name the API shows for an engine (the original's registered names).
pub fn language(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Native => "Native",
        EngineKind::DotNet => "C#",
        // The original's registered name for CSharpSourceEngine.
        EngineKind::CSharpSource => "C#",
        EngineKind::Python => "Python",
        EngineKind::PythonWheel => "Python Bundle",
    }
}

/// A boxed, sendable future: what the object-safe traits of this crate return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a worker shares a host process with other workers of its engine or gets its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One host per engine carries many workers (the default).
    #[default]
    Shared,
    /// The worker gets a host of its own; its crashes never touch anyone else.
    Dedicated,
}

impl Isolation {
    /// The wire name (`shared` or `dedicated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Dedicated => "dedicated",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Isolation::Shared),
            "dedicated" => Some(Isolation::Dedicated),
            _ => None,
        }
    }
}

/// Everything the runtime needs to load a worker into a host and feed it.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The worker id (a UUID).
    pub id: String,
    /// Which engine runs the package.
    pub engine: EngineKind,
    /// The input topic.
    pub topic: String,
    /// The coordination group (mutual exclusion across the group), if any.
    pub group: Option<String>,
    /// Stamped onto every incoming event as extensions (existing ones win), in order.
    pub config: Vec<(String, String)>,
    /// Shared or dedicated host.
    pub isolation: Isolation,
    /// Deadline for one `Process` call.
    pub message_timeout: Duration,
    /// How many calls may run at once on this worker.
    pub max_concurrency: u32,
    /// Where the package is extracted (read-only for the host).
    pub package_dir: PathBuf,
    /// What validation found in the package (library, entry points, ...).
    pub package: PackageInfo,
    /// The worker's own limits; non-empty ones give it a host of its own spawned with them.
    pub limits: WorkerLimits,
}

/// Why the runtime could not carry out a start, reload or stop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime is not there or not able to take work (no host pool, shutting down).
    #[error("the worker runtime is unavailable: {0}")]
    Unavailable(String),
    /// The host refused or failed to load the package.
    #[error("worker '{worker}' failed to load: {message}")]
    LoadFailed {
        /// The worker id.
        worker: String,
        /// What the host reported.
        message: String,
    },
    /// The worker is not loaded (stop or reload of a worker the runtime does not know).
    #[error("worker '{0}' is not loaded in the runtime")]
    NotLoaded(String),
    /// Anything else; the message is logged, not sent to clients.
    #[error("runtime failure for worker '{worker}': {message}")]
    Internal {
        /// The worker id.
        worker: String,
        /// What went wrong.
        message: String,
    },
}

/// Classification of a failed call, as the lifecycle events name it (snake_case on the wire).
///
/// Note for integration: `events.rs` (branch `bus`) defines the same enum for the lifecycle
/// events; one of the two should re-export the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The plugin returned an `error_message`.
    WorkerError,
    /// The plugin returned non-zero.
    ProcessFailed,
    /// The reply was not a valid `WorkerResponse`.
    InvalidResponse,
    /// The host died during the call.
    Crash,
    /// The worker crashed its host too often in a window and was quarantined.
    CrashLoop,
    /// The call exceeded the message timeout.
    Timeout,
    /// The package could not be loaded.
    LoadFailed,
    /// The worker's queue overflowed.
    Overflow,
    /// The worker's group lock stayed taken through `GROUP_LOCK_MAX_RETRIES` attempts.
    LockContention,
}

impl ErrorType {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::WorkerError => "worker_error",
            ErrorType::ProcessFailed => "process_failed",
            ErrorType::InvalidResponse => "invalid_response",
            ErrorType::Crash => "crash",
            ErrorType::CrashLoop => "crash_loop",
            ErrorType::Timeout => "timeout",
            ErrorType::LoadFailed => "load_failed",
            ErrorType::Overflow => "overflow",
            ErrorType::LockContention => "lock_contention",
        }
    }

    /// Parses the snake_case wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "worker_error" => ErrorType::WorkerError,
            "process_failed" => ErrorType::ProcessFailed,
            "invalid_response" => ErrorType::InvalidResponse,
            "crash" => ErrorType::Crash,
            "crash_loop" => ErrorType::CrashLoop,
            "timeout" => ErrorType::Timeout,
            "load_failed" => ErrorType::LoadFailed,
            "overflow" => ErrorType::Overflow,
            "lock_contention" => ErrorType::LockContention,
            _ => return None,
        })
    }
}

/// A direct invocation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} : {message}", error_type.as_str())]
pub struct InvokeError {
    /// What kind of failure.
    pub error_type: ErrorType,
    /// What happened, for the caller.
    pub message: String,
}

/// Live figures for one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerRuntimeInfo {
    /// The pid of the host process carrying the worker, if it is loaded.
    pub host_pid: Option<i32>,
    /// Messages processed successfully.
    pub processed: u64,
    /// Calls that failed (each attempt counts).
    pub failed: u64,
    /// Messages that ended on the dead-letter topic.
    pub dead_lettered: u64,
    /// Calls running right now.
    pub in_flight: u64,
}

/// One host process of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// A stable name for the host slot (survives respawns).
    pub id: String,
    /// The current pid; `None` while the host is being respawned.
    pub pid: Option<i32>,
    /// Which engine the host runs.
    pub engine: EngineKind,
    /// Shared or dedicated.
    pub isolation: Isolation,
    /// The workers loaded into it.
    pub workers: Vec<String>,
    /// How often it was respawned.
    pub restarts: u32,
    /// How often it died other than by an orderly shutdown.
    pub crashes: u64,
    /// Calls running on it now.
    pub in_flight: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// The sandbox layers of the current process (`None` while it is being respawned).
    pub sandbox: Option<crate::pool::layers::HostLayers>,
    /// Frames in which the host spoke for a worker it does not carry (or answered a call not
    /// in flight); more than zero flags the host.
    pub identity_violations: u64,
    /// The limits the host was spawned with when they are a worker's own (empty: the engine's).
    pub limits: WorkerLimits,
}

/// One engine and whether it can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The MIME type that selects it.
    pub mime: String,
    /// The language name the API shows.
    pub language: String,
    /// Whether workers of this engine can be started.
    pub available: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// What runs the plugins. Implemented by the host pool + dispatcher.
pub trait Runtime: Send + Sync + 'static {
    /// Load into a host and subscribe to the topic; Ok once the host confirmed the load.
    fn start(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Hot reload of a running worker (new code for later messages).
    fn reload(&self, spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Unsubscribe, let in-flight calls finish (bounded), unload.
    fn stop(&self, worker_id: &str) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// One event straight to the worker; no retries, no dead letter.
    fn invoke(
        &self,
        worker_id: &str,
        event: CloudEvent,
    ) -> BoxFuture<'_, Result<Option<CloudEvent>, InvokeError>>;
    /// Live figures of a loaded worker; `None` when it is not loaded.
    fn worker_info(&self, worker_id: &str) -> Option<WorkerRuntimeInfo>;
    /// The host processes of the pool.
    fn hosts(&self) -> Vec<HostInfo>;
    /// The idle warm standby hosts (`HOST_STANDBY`), one per engine in use.
    fn standby_hosts(&self) -> Vec<crate::pool::standby::StandbyInfo> {
        Vec::new()
    }
    /// The engines and whether they can run here.
    fn engines(&self) -> Vec<EngineInfo>;
    /// Stop every host, letting in-flight calls finish until `deadline`.
    fn shutdown(&self, deadline: Duration) -> BoxFuture<'_, ()>;
    /// Checks code before the control plane accepts it, where that takes an engine: C# source
    /// is compiled in a host (no instance is created, no worker code runs) and the compiled
    /// image cached. `spec.id` is a throwaway id. A runtime that cannot check accepts: the
    /// code is then checked when the worker starts.
    fn validate(&self, _spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    /// Appends the runtime's own Prometheus metrics (text format) to `out`.
    fn render_metrics(&self, out: &mut String) {
        let _ = out;
    }
}

/// The runtime of a build without a host pool: nothing can be started.
///
/// Every call that would run plugin code fails with [`RuntimeError::Unavailable`] (503 in the
/// API); the engines are listed as unavailable with the reason.
#[derive(Debug, Default)]
pub struct Unavailable;

/// The reason [`Unavailable`] gives.
pub const NO_HOST_POOL: &str = "no host pool in this build";

impl Runtime for Unavailable {
    fn start(&self, _spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Err(RuntimeError::Unavailable(NO_HOST_POOL.to_owned())) })
    }

    fn reload(&self, _spec: WorkerSpec) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Err(RuntimeError::Unavailable(NO_HOST_POOL.to_owned())) })
    }

    fn stop(&self, worker_id: &str) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let id = worker_id.to_owned();
        Box::pin(async move { Err(RuntimeError::NotLoaded(id)) })
    }

    fn invoke(
        &self,
        _worker_id: &str,
        _event: CloudEvent,
    ) -> BoxFuture<'_, Result<Option<CloudEvent>, InvokeError>> {
        Box::pin(async {
            Err(InvokeError {
                error_type: ErrorType::LoadFailed,
                message: NO_HOST_POOL.to_owned(),
            })
        })
    }

    fn worker_info(&self, _worker_id: &str) -> Option<WorkerRuntimeInfo> {
        None
    }

    fn hosts(&self) -> Vec<HostInfo> {
        Vec::new()
    }

    fn engines(&self) -> Vec<EngineInfo> {
        ENGINES
            .iter()
            .map(|e| EngineInfo {
                mime: e.mime().to_owned(),
                language: language(*e).to_owned(),
                available: false,
                reason: Some(NO_HOST_POOL.to_owned()),
            })
            .collect()
    }

    fn shutdown(&self, _deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
