//! The control plane's operations as plain functions: create, start, stop, reload, delete,
//! tags, invoke, recover. The HTTP handlers validate and build the commands; this module does
//! the work against the registry, the code store and the [`Runtime`].
//!
//! **Invariants:**
//! - a package is validated before anything about it is stored (blob, package dir, registry);
//! - lifecycle operations on one worker are serialised (a per-worker async lock), so a start
//!   racing a delete cannot leave a loaded worker without a registry entry;
//! - the registry is updated after the runtime confirmed (start, reload), so a failed start
//!   never shows `RUNNING`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wm_shared::sync::Locked as _;

use wm_shared::CloudEvent;

use crate::api::error::ApiError;
use crate::codefetch::{CodeFetcher, FetchError};
use crate::codestore::CodeStore;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::python_deps::Report as DepsReport;
use crate::registry::{
    CodeRef, CodeSourceKind, HistoryEntry, LastError, Registry, Status, TagOutcome, WorkerRecord,
    now_rfc3339,
};
use crate::runtime::{ErrorType, Isolation, Runtime, RuntimeError, WorkerSpec};

mod python;
pub use python::{DepsEvent, DepsListener};
use wm_shared::package::{self, EngineKind, Limits, PackageError, PackageInfo, Target};

/// Most tags per worker (the original's limit).
pub const MAX_TAGS: usize = 50;
/// Longest tag key, characters.
pub const MAX_TAG_KEY: usize = 128;
/// Longest tag value, characters.
pub const MAX_TAG_VALUE: usize = 1024;

/// Where new code comes from.
#[derive(Debug, Clone)]
pub enum CodeInput {
    /// Bytes in the request.
    Content {
        /// The package.
        bytes: Vec<u8>,
        /// Its minisign signature (the `.minisig` text), if given.
        signature: Option<String>,
    },
    /// A URL to download, with an optional expected sha256 (hex).
    Url {
        /// The URL.
        url: String,
        /// Expected sha256, lower-case hex.
        sha256: Option<String>,
        /// Its minisign signature; when signatures are required and this is `None`,
        /// `<url>.minisig` is downloaded.
        signature: Option<String>,
    },
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct CreateWorker {
    /// The engine the MIME type selected.
    pub engine: EngineKind,
    /// The MIME type as given.
    pub mime_type: String,
    /// Input topic.
    pub topic: String,
    /// Coordination group.
    pub group: Option<String>,
    /// The code.
    pub code: CodeInput,
    /// Extensions stamped onto events.
    pub config: Vec<(String, String)>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Shared or dedicated host.
    pub isolation: Isolation,
    /// Deadline of one call, seconds (default: `MESSAGE_HANDLING_TIMEOUT_SECONDS`).
    pub message_timeout_seconds: Option<u32>,
    /// Calls at once (default 1).
    pub max_concurrency: u32,
    /// The worker's own resource limits (checked per engine; non-empty means dedicated).
    pub limits: crate::worker_limits::WorkerLimits,
    /// Cluster mode: on how many daemons it runs (`None`: all).
    pub replicas: Option<u32>,
}

/// A signature as sent: the `.minisig` text, or that text in base64 (headers cannot carry
/// line breaks).
pub fn decode_signature_text(s: &str) -> String {
    use base64::Engine as _;
    if s.contains("comment:") {
        return s.to_owned();
    }
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| s.to_owned())
}

/// Checks a tag key and value against the limits (400 when over).
pub fn check_tag(key: &str, value: &str) -> Result<(), ApiError> {
    let keylen = key.chars().count();
    if keylen == 0 || keylen > MAX_TAG_KEY {
        return Err(ApiError::InvalidArgument(format!(
            "tag key '{key}' must be 1-{MAX_TAG_KEY} characters, it has {keylen}"
        )));
    }
    let vlen = value.chars().count();
    if vlen > MAX_TAG_VALUE {
        return Err(ApiError::InvalidArgument(format!(
            "tag '{key}' has a value of {vlen} characters; the limit is {MAX_TAG_VALUE}"
        )));
    }
    Ok(())
}

/// Checks a whole tag map (400 when over a limit).
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::InvalidArgument(format!(
            "{} tags given; a worker has at most {MAX_TAGS}",
            tags.len()
        )));
    }
    tags.iter().try_for_each(|(k, v)| check_tag(k, v))
}

/// What the control plane did to a worker, for whoever publishes lifecycle events (the
/// `registered` and `stopped` events of `workmanager.lifecycle` come from here; the runtime
/// reports `starting`, `online`, `failed` itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEventKind {
    /// Created (status `STOPPED`).
    Registered,
    /// Stopped by a user.
    Stopped,
    /// Deleted.
    Deleted,
    /// New code recorded (hot reload).
    CodeReloaded,
}

/// One [`ControlEventKind`] with the worker it is about.
#[derive(Debug, Clone)]
pub struct ControlEvent {
    /// What happened.
    pub kind: ControlEventKind,
    /// The worker id.
    pub worker_id: String,
    /// Its topic.
    pub topic: String,
    /// Its group.
    pub group: Option<String>,
}

/// A listener for [`ControlEvent`]s. Called synchronously right after the change is stored;
/// it must not block (spawn a task for async work).
pub type ControlListener = Box<dyn Fn(&ControlEvent) + Send + Sync>;

/// What a create did: the worker, the package's accepted deviations, and for a wheel what its
/// dependency install did.
#[derive(Debug, Clone)]
pub struct Created {
    pub worker: WorkerRecord,
    pub warnings: Vec<String>,
    pub dependencies: Option<DepsReport>,
}

/// `invalid_package` with every problem for a refused package; anything else is ours (500).
fn package_error(e: PackageError) -> ApiError {
    match e {
        PackageError::Invalid { problems } => {
            ApiError::InvalidPackage(problems.iter().map(ToString::to_string).collect())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

/// The control plane.
pub struct Control {
    registry: Registry,
    codes: CodeStore,
    fetcher: CodeFetcher,
    runtime: Arc<dyn Runtime>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// The machine packages must run on (RID, .NET version), found once at start.
    target: Target,
    /// One async lock per worker id for lifecycle operations.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the first recovery finished (readiness).
    ready: AtomicBool,
    /// The same, for those who wait for it (the bus drops unconsumed events only when ready).
    ready_tx: tokio::sync::watch::Sender<bool>,
    /// Why the start-up recovery failed as a whole, if it did (keeps `/health` unready).
    recovery_error: Mutex<Option<String>>,
    /// Who hears about creates, stops, deletes and reloads.
    listeners: Mutex<Vec<ControlListener>>,
    /// Who hears about wheel dependency installs.
    deps_listeners: Mutex<Vec<python::DepsListener>>,
    /// More `/health` entries (the NATS connection in cluster mode).
    health_checks: Mutex<Vec<(&'static str, HealthCheck)>>,
    /// Cluster mode: the members (`GET /v1/cluster`).
    membership: Mutex<Option<Arc<crate::cluster::Membership>>>,
    /// Which workers this daemon runs (embedded: all; cluster: `crate::cluster::placement`).
    placement: Arc<crate::cluster::Placement>,
    /// The code each loaded worker was loaded with (cluster reconcile reloads on a change).
    pub(crate) loaded_code: Mutex<HashMap<String, String>>,
    /// Cluster registry: the recovery leader lease (`crate::cluster::recovery`).
    recovery_lease: Mutex<Option<Arc<crate::cluster::RecoveryLease>>>,
}

/// A `/health` entry: `Ok(description)` when healthy, `Err(description)` when not.
pub type HealthCheck = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Assembles the control plane.
    pub fn new(
        registry: Registry,
        codes: CodeStore,
        runtime: Arc<dyn Runtime>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Control {
        let limits = Limits {
            max_package_bytes: config.max_code_bytes,
            ..Limits::default()
        };
        Control {
            registry,
            codes,
            fetcher: CodeFetcher::new(config.code_fetch.clone()),
            runtime,
            config,
            metrics,
            limits,
            target: Target::current(),
            locks: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            ready_tx: tokio::sync::watch::Sender::new(false),
            recovery_error: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
            deps_listeners: Mutex::new(Vec::new()),
            health_checks: Mutex::new(Vec::new()),
            membership: Mutex::new(None),
            placement: Arc::new(crate::cluster::Placement::alone(
                crate::cluster::instance_id(),
            )),
            loaded_code: Mutex::new(HashMap::new()),
            recovery_lease: Mutex::new(None),
        }
    }

    /// Cluster registry: start-up recovery goes through this lease (one daemon recovers).
    pub fn set_recovery_lease(&self, lease: Arc<crate::cluster::RecoveryLease>) {
        *crate::sync::lock(&self.recovery_lease) = Some(lease);
    }

    /// Which workers this daemon runs.
    pub fn placement(&self) -> &Arc<crate::cluster::Placement> {
        &self.placement
    }

    /// Where `w` runs (`GET /v1/workers/{id}`).
    pub fn placement_of(&self, w: &WorkerRecord) -> crate::cluster::PlacementView {
        self.placement.view(w)
    }

    /// Cluster mode: where `GET /v1/cluster` finds the members.
    pub fn set_membership(&self, m: Arc<crate::cluster::Membership>) {
        *crate::sync::lock(&self.membership) = Some(m);
    }

    /// The membership, in cluster mode.
    pub fn membership(&self) -> Option<Arc<crate::cluster::Membership>> {
        crate::sync::lock(&self.membership).clone()
    }

    /// Adds an entry to `/health`: the daemon is not ready while it fails.
    pub fn add_health_check(&self, name: &'static str, check: HealthCheck) {
        crate::sync::lock(&self.health_checks).push((name, check));
    }

    /// Runs the extra `/health` entries: (name, healthy, description).
    pub fn run_health_checks(&self) -> Vec<(&'static str, bool, String)> {
        crate::sync::lock(&self.health_checks)
            .iter()
            .map(|(n, c)| match c() {
                Ok(d) => (*n, true, d),
                Err(d) => (*n, false, d),
            })
            .collect()
    }

    /// Adds a listener for creates, stops, deletes and reloads.
    pub fn add_listener(&self, listener: ControlListener) {
        self.listeners.locked().push(listener);
    }

    fn notify(&self, kind: ControlEventKind, w: &WorkerRecord) {
        let event = ControlEvent {
            kind,
            worker_id: w.id.clone(),
            topic: w.topic.clone(),
            group: w.group.clone(),
        };
        for l in self.listeners.locked().iter() {
            l(&event);
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the start-up recovery has finished successfully.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A receiver that turns `true` once the start-up recovery has finished successfully
    /// (`wait_for(|r| *r)` to wait for it).
    pub fn ready_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    /// Why the start-up recovery failed, if it did.
    pub fn recovery_error(&self) -> Option<String> {
        self.recovery_error.locked().clone()
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.locked();
        map.entry(id.to_owned()).or_default().clone()
    }

    fn forget_lock(&self, id: &str) {
        let mut map = self.locks.locked();
        map.remove(id);
    }

    /// Registry calls are short, synchronous SQLite transactions; run them off the async
    /// workers so a slow disk does not stall other requests.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Registry) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reg = self.registry.clone();
        tokio::task::spawn_blocking(move || f(reg))
            .await
            .map_err(|e| ApiError::Internal(format!("registry task failed: {e}")))?
    }

    /// One worker.
    pub async fn get(&self, id: &str) -> Result<WorkerRecord, ApiError> {
        let id2 = id.to_owned();
        self.blocking(move |r| Ok(r.store().get_worker(&id2)?))
            .await?
            .ok_or_else(|| ApiError::worker_not_found(id))
    }

    /// Every worker, oldest first.
    pub async fn list(&self) -> Result<Vec<WorkerRecord>, ApiError> {
        self.blocking(|r| Ok(r.store().list_workers()?)).await
    }

    /// Downloads or takes the code, checks size and validates it as a package for `engine`.
    async fn obtain_code(
        &self,
        input: CodeInput,
        engine: EngineKind,
        for_worker: &python::ForWorker,
    ) -> Result<(Vec<u8>, CodeRef, PackageInfo, Option<DepsReport>), ApiError> {
        let (bytes, source, url, signature) = match input {
            CodeInput::Content { bytes, signature } => {
                (bytes, CodeSourceKind::Content, None, signature)
            }
            CodeInput::Url {
                url,
                sha256,
                signature,
            } => {
                let result = self.fetcher.fetch(&url, sha256.as_deref()).await;
                self.metrics.code_fetch(match &result {
                    Ok(_) => "ok",
                    Err(FetchError::Blocked { .. } | FetchError::BadUrl { .. }) => "blocked",
                    Err(FetchError::TooLarge { .. }) => "too_large",
                    Err(FetchError::Sha256Mismatch { .. }) => "sha256_mismatch",
                    Err(FetchError::Failed { .. }) => "failed",
                });
                match result {
                    Ok(bytes) => (bytes, CodeSourceKind::Url, Some(url), signature),
                    Err(e) => {
                        tracing::warn!(error = %e, "code fetch refused or failed");
                        return Err(e.into());
                    }
                }
            }
        };
        if bytes.is_empty() {
            return Err(ApiError::InvalidArgument("the code is empty".to_owned()));
        }
        self.check_signature(&bytes, url.as_deref(), signature)
            .await?;
        let max = self.config.max_code_bytes;
        if bytes.len() as u64 > max {
            return Err(ApiError::TooLarge(format!(
                "the package has {} bytes; the limit is {max} (PACKAGE_MAX_BYTES)",
                bytes.len()
            )));
        }
        let (limits, target) = (self.limits.clone(), self.target.clone());
        let (bytes, info) = tokio::task::spawn_blocking(move || {
            let info = package::inspect(&bytes, engine, &target, &limits);
            (bytes, info)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("package check task failed: {e}")))?;
        let info = info.map_err(package_error)?;
        if engine == EngineKind::Python {
            self.check_python_imports(&bytes).await?;
        }
        let dependencies = if engine == EngineKind::PythonWheel {
            Some(self.install_python_deps(&bytes, &info, for_worker).await?)
        } else {
            None
        };
        let code = CodeRef {
            sha256: crate::codestore::sha256_hex(&bytes),
            size: bytes.len() as u64,
            source,
            url,
        };
        Ok((bytes, code, info, dependencies))
    }

    /// With `PACKAGE_TRUSTED_KEYS` set: the package needs a minisign signature by one of
    /// them (given, or `<url>.minisig` next to a URL source); 422 `invalid_signature` if not.
    async fn check_signature(
        &self,
        bytes: &[u8],
        url: Option<&str>,
        signature: Option<String>,
    ) -> Result<(), ApiError> {
        let keys = &self.config.security.trusted_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let signature = match (signature, url) {
            (Some(s), _) => Some(s),
            (None, Some(url)) => {
                let sig_url = format!("{url}.minisig");
                match self.fetcher.fetch(&sig_url, None).await {
                    Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Err(e) => {
                        return Err(ApiError::InvalidSignature(format!(
                            "PACKAGE_TRUSTED_KEYS requires a signature and {sig_url} could not be fetched: {e}; publish the .minisig next to the package or send 'signature'"
                        )));
                    }
                }
            }
            (None, None) => None,
        };
        let text = signature.map(|s| decode_signature_text(&s));
        crate::signature::verify(keys, bytes, text.as_deref()).map_err(|e| {
            tracing::warn!(error = %e, "package signature refused");
            ApiError::InvalidSignature(e.to_string())
        })
    }

    /// Writes the blob and extracts it (both idempotent, content-addressed).
    async fn store_code(
        &self,
        bytes: Vec<u8>,
        info: PackageInfo,
    ) -> Result<std::path::PathBuf, ApiError> {
        let codes = self.codes.clone();
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            codes.put(&bytes)?;
            Ok(codes.extract(&bytes, &info, &limits)?)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("code store task failed: {e}")))?
    }

    /// Validates, stores and registers a new worker (status `STOPPED`).
    pub async fn create(&self, cmd: CreateWorker) -> Result<WorkerRecord, ApiError> {
        self.create_with_warnings(cmd).await.map(|(w, _)| w)
    }

    /// [`Control::create`], also returning the package's accepted deviations
    /// (`PackageInfo::warnings`, e.g. the seed's layout), which are logged too.
    pub async fn create_with_warnings(
        &self,
        cmd: CreateWorker,
    ) -> Result<(WorkerRecord, Vec<String>), ApiError> {
        self.create_detailed(cmd)
            .await
            .map(|c| (c.worker, c.warnings))
    }

    /// [`Control::create`] with everything the create response reports.
    pub async fn create_detailed(&self, cmd: CreateWorker) -> Result<Created, ApiError> {
        // Known before the code is checked, so that install events name the worker to be.
        let id = uuid::Uuid::new_v4().to_string();
        let for_worker = python::ForWorker {
            id: id.clone(),
            topic: cmd.topic.clone(),
            group: cmd.group.clone(),
            operation: "create",
        };
        let (bytes, code, info, dependencies) =
            self.obtain_code(cmd.code, cmd.engine, &for_worker).await?;
        let warnings = info.warnings.clone();
        for w in &warnings {
            tracing::warn!(sha256 = %code.sha256, "package accepted with a warning: {w}");
        }
        let dir = self.store_code(bytes, info.clone()).await?;
        self.validate_code(dir, info, cmd.isolation).await?;
        let now = now_rfc3339();
        let timeout = cmd.message_timeout_seconds.unwrap_or_else(|| {
            u32::try_from(self.config.message_timeout.as_secs()).unwrap_or(u32::MAX)
        });
        let record = WorkerRecord {
            id,
            mime_type: cmd.mime_type,
            topic: cmd.topic,
            group: cmd.group,
            config: cmd.config,
            tags: cmd.tags,
            isolation: cmd.isolation,
            limits: cmd.limits,
            message_timeout_seconds: timeout,
            max_concurrency: cmd.max_concurrency,
            status: Status::Stopped,
            desired_running: false,
            last_error: None,
            code,
            replicas: cmd.replicas,
            created_at: now.clone(),
            updated_at: now,
        };
        let r = record.clone();
        self.blocking(move |reg| Ok(reg.store().create_worker(&r)?))
            .await?;
        self.metrics.workers_created.fetch_add(1, Ordering::Relaxed);
        self.notify(ControlEventKind::Registered, &record);
        tracing::info!(worker = %record.id, mime = %record.mime_type, topic = %record.topic,
            sha256 = %record.code.sha256, "worker created");
        Ok(Created {
            worker: record,
            warnings,
            dependencies,
        })
    }

    /// Code whose check needs an engine (C# source: a compile in a host) is checked here,
    /// before anything refers to it; 422 `compile_failed` with every diagnostic if it fails.
    async fn validate_code(
        &self,
        package_dir: std::path::PathBuf,
        package: PackageInfo,
        isolation: crate::runtime::Isolation,
    ) -> Result<(), ApiError> {
        if package.engine != EngineKind::CSharpSource {
            return Ok(());
        }
        let spec = WorkerSpec {
            id: format!("validate-{}", uuid::Uuid::new_v4()),
            engine: package.engine,
            topic: String::new(),
            group: None,
            config: Vec::new(),
            isolation,
            message_timeout: self.config.message_timeout,
            max_concurrency: 1,
            package_dir,
            package,
            limits: Default::default(),
        };
        self.runtime.validate(spec).await.map_err(ApiError::from)
    }

    /// What the runtime needs to load `w` (re-validates the stored package).
    pub(crate) async fn spec(&self, w: &WorkerRecord) -> Result<WorkerSpec, ApiError> {
        let engine = EngineKind::from_mime(&w.mime_type)
            .ok_or_else(|| ApiError::EngineNotFound(w.mime_type.clone()))?;
        let codes = self.codes.clone();
        let sha = w.code.sha256.clone();
        let (limits, target) = (self.limits.clone(), self.target.clone());
        let (dir, info) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let bytes = codes.read(&sha)?;
            let info = package::inspect(&bytes, engine, &target, &limits).map_err(package_error)?;
            let dir = codes.extract(&bytes, &info, &limits)?;
            Ok((dir, info))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("package task failed: {e}")))??;
        Ok(WorkerSpec {
            id: w.id.clone(),
            engine,
            topic: w.topic.clone(),
            group: w.group.clone(),
            config: w.config.clone(),
            isolation: w.isolation,
            message_timeout: Duration::from_secs(w.message_timeout_seconds.into()),
            max_concurrency: w.max_concurrency,
            package_dir: dir,
            package: info,
            limits: w.limits,
        })
    }

    pub(crate) async fn set_status(
        &self,
        id: &str,
        status: Status,
        desired: Option<bool>,
        last_error: Option<LastError>,
    ) -> Result<(), ApiError> {
        let id = id.to_owned();
        self.blocking(move |r| {
            r.store()
                .set_status(&id, status, desired, last_error.as_ref())?;
            Ok(())
        })
        .await
    }

    /// Starts a worker (idempotent). `ERROR` workers are resumed.
    pub async fn start(&self, id: &str) -> Result<WorkerRecord, ApiError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let w = self.get(id).await?;
        if w.status == Status::Running && self.runtime.worker_info(id).is_some() {
            return Ok(w);
        }
        self.start_locked(&w).await?;
        self.get(id).await
    }

    /// Starts `w` in the runtime and records the outcome. Caller holds the worker's lock.
    async fn start_locked(&self, w: &WorkerRecord) -> Result<(), ApiError> {
        if !self.placement.is_here(w) {
            // Cluster mode, `replicas` placed it on other daemons: they load it when they
            // see the status change (docs/cluster.md, "Placement").
            self.set_status(&w.id, Status::Running, Some(true), None)
                .await?;
            tracing::info!(worker = %w.id, "worker started on the daemons it is placed on");
            return Ok(());
        }
        self.load_into_runtime(w, Some(true)).await?;
        self.set_status(&w.id, Status::Running, Some(true), None)
            .await?;
        tracing::info!(worker = %w.id, "worker started");
        Ok(())
    }

    /// Loads `w` into this daemon's runtime and records which code is loaded; a failed load
    /// puts the worker in `ERROR` (with `desired_running` as given) and is returned.
    pub(crate) async fn load_into_runtime(
        &self,
        w: &WorkerRecord,
        desired_running: Option<bool>,
    ) -> Result<(), ApiError> {
        let spec = self.spec(w).await?;
        match self.runtime.start(spec).await {
            Ok(()) => {
                crate::sync::lock(&self.loaded_code).insert(w.id.clone(), w.code.sha256.clone());
                Ok(())
            }
            Err(RuntimeError::LoadFailed { worker, message }) => {
                let err = LastError {
                    error_type: ErrorType::LoadFailed.as_str().to_owned(),
                    message: message.clone(),
                    at: now_rfc3339(),
                };
                self.set_status(&w.id, Status::Error, desired_running, Some(err))
                    .await?;
                tracing::warn!(worker = %w.id, %message, "worker failed to load");
                Err(RuntimeError::LoadFailed { worker, message }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops a worker (idempotent).
    pub async fn stop(&self, id: &str) -> Result<WorkerRecord, ApiError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let w = self.get(id).await?;
        self.unload(id).await?;
        if w.status != Status::Stopped || w.desired_running {
            self.set_status(id, Status::Stopped, Some(false), None)
                .await?;
            tracing::info!(worker = %id, "worker stopped");
            self.notify(ControlEventKind::Stopped, &w);
        }
        self.get(id).await
    }

    /// Unloads from the runtime; "not loaded" is fine.
    pub(crate) async fn unload(&self, id: &str) -> Result<(), ApiError> {
        crate::sync::lock(&self.loaded_code).remove(id);
        match self.runtime.stop(id).await {
            Ok(()) | Err(RuntimeError::NotLoaded(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a worker from any state.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        // 404 before touching the runtime.
        let w = self.get(id).await?;
        self.unload(id).await?;
        let id2 = id.to_owned();
        let deleted = self
            .blocking(move |r| Ok(r.store().delete_worker(&id2)?))
            .await?;
        self.forget_lock(id);
        if !deleted {
            return Err(ApiError::worker_not_found(id));
        }
        self.metrics.workers_deleted.fetch_add(1, Ordering::Relaxed);
        self.notify(ControlEventKind::Deleted, &w);
        tracing::info!(worker = %id, "worker deleted");
        Ok(())
    }

    /// Hot reload: validates and stores the new code, reloads it into a running worker, then
    /// records it (the old version stays in the history).
    pub async fn load_code(&self, id: &str, input: CodeInput) -> Result<WorkerRecord, ApiError> {
        self.load_code_detailed(id, input).await.map(|(w, _)| w)
    }

    /// [`Control::load_code`], also returning what a wheel's dependency install did.
    pub async fn load_code_detailed(
        &self,
        id: &str,
        input: CodeInput,
    ) -> Result<(WorkerRecord, Option<DepsReport>), ApiError> {
        self.reload(id, input, None).await
    }

    /// [`Control::load_code_detailed`] that may also replace the worker's own limits (`Some`;
    /// an empty value clears them). New limits mean a new host: a running worker is loaded into
    /// a host spawned with them, then leaves its old one. A worker given limits becomes
    /// dedicated.
    pub async fn reload(
        &self,
        id: &str,
        input: CodeInput,
        limits: Option<crate::worker_limits::WorkerLimits>,
    ) -> Result<(WorkerRecord, Option<DepsReport>), ApiError> {
        // 404 before downloading anything.
        let w = self.get(id).await?;
        let engine = EngineKind::from_mime(&w.mime_type)
            .ok_or_else(|| ApiError::EngineNotFound(w.mime_type.clone()))?;
        let for_worker = python::ForWorker {
            id: w.id.clone(),
            topic: w.topic.clone(),
            group: w.group.clone(),
            operation: "reload",
        };
        let (bytes, code, info, dependencies) =
            self.obtain_code(input, engine, &for_worker).await?;
        let dir = self.store_code(bytes, info.clone()).await?;
        self.validate_code(dir, info, w.isolation).await?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let mut w = self.get(id).await?;
        let previous = std::mem::replace(&mut w.code, code.clone());
        let new_limits = limits.filter(|l| *l != w.limits);
        if let Some(l) = new_limits {
            crate::worker_limits::check(&l, engine).map_err(ApiError::InvalidArgument)?;
            w.limits = l;
            if !l.is_empty() {
                w.isolation = crate::runtime::Isolation::Dedicated;
            }
        }
        if w.status == Status::Running && self.runtime.worker_info(id).is_some() {
            let spec = self.spec(&w).await?;
            self.runtime.reload(spec).await?;
            crate::sync::lock(&self.loaded_code).insert(w.id.clone(), w.code.sha256.clone());
        }
        if let Some(l) = new_limits {
            let (id2, isolation) = (id.to_owned(), w.isolation);
            self.blocking(move |r| {
                Ok(r.store().set_limits(&id2, &l, isolation, &now_rfc3339())?)
            })
            .await?;
        }
        let id2 = id.to_owned();
        let found = self
            .blocking(move |r| Ok(r.store().set_code(&id2, &code, &now_rfc3339())?))
            .await?;
        if !found {
            return Err(ApiError::worker_not_found(id));
        }
        self.metrics.code_reloads.fetch_add(1, Ordering::Relaxed);
        self.notify(ControlEventKind::CodeReloaded, &w);
        tracing::info!(worker = %id, from = %previous.sha256, to = %w.code.sha256, "code reloaded");
        Ok((self.get(id).await?, dependencies))
    }

    /// The code history, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, ApiError> {
        let id2 = id.to_owned();
        self.blocking(move |r| Ok(r.store().history(&id2)?))
            .await?
            .ok_or_else(|| ApiError::worker_not_found(id))
    }

    /// Replaces all tags.
    pub async fn set_tags(
        &self,
        id: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        check_tags(&tags)?;
        let id2 = id.to_owned();
        let t = tags.clone();
        let found = self
            .blocking(move |r| Ok(r.store().set_tags(&id2, &t)?))
            .await?;
        if !found {
            return Err(ApiError::worker_not_found(id));
        }
        Ok(tags)
    }

    /// Sets one tag (409 when it would be tag number 51).
    pub async fn set_tag(&self, id: &str, key: &str, value: &str) -> Result<(), ApiError> {
        check_tag(key, value)?;
        let (id2, k, v) = (id.to_owned(), key.to_owned(), value.to_owned());
        match self
            .blocking(move |r| Ok(r.store().set_tag(&id2, &k, &v, MAX_TAGS)?))
            .await?
        {
            TagOutcome::Set => Ok(()),
            TagOutcome::NotFound => Err(ApiError::worker_not_found(id)),
            TagOutcome::LimitReached => Err(ApiError::Conflict(format!(
                "worker '{id}' already has {MAX_TAGS} tags, the limit; delete one first"
            ))),
        }
    }

    /// Removes one tag.
    pub async fn delete_tag(&self, id: &str, key: &str) -> Result<(), ApiError> {
        let (id2, k) = (id.to_owned(), key.to_owned());
        match self
            .blocking(move |r| Ok(r.store().delete_tag(&id2, &k)?))
            .await?
        {
            None => Err(ApiError::worker_not_found(id)),
            Some(false) => Err(ApiError::NotFound(format!(
                "worker '{id}' has no tag '{key}'"
            ))),
            Some(true) => Ok(()),
        }
    }

    /// Sends one event straight to a running worker.
    pub async fn invoke(
        &self,
        id: &str,
        event: CloudEvent,
    ) -> Result<Option<CloudEvent>, ApiError> {
        // The status alone, read at once when the store can (no hand-off to a blocking thread
        // and back: two thread wake-ups, a third of an invoke's), else as for every read.
        let status = match self.registry.store().worker_status_now(id) {
            Some(read) => read?.ok_or_else(|| ApiError::worker_not_found(id))?,
            None => self.get(id).await?.status,
        };
        if status != Status::Running {
            return Err(ApiError::Conflict(format!(
                "worker '{id}' is {}; start it first",
                status.as_str()
            )));
        }
        let max = crate::pool::guard::max_event_bytes(self.config.ring_max_frame_bytes);
        let len = event.to_flatbuffer().len();
        if len > max {
            return Err(ApiError::TooLarge(format!(
                "the event encodes to {len} bytes, over the {max} bytes a worker's ring carries (RING_MAX_FRAME_BYTES={} less the frame overhead); send less or raise RING_MAX_FRAME_BYTES",
                self.config.ring_max_frame_bytes
            )));
        }
        Ok(self.runtime.invoke(id, event).await?)
    }

    /// Starts every worker that should run and is not loaded: those the user started (or that
    /// were running before a restart) and that are not in `ERROR`. Returns how many started.
    ///
    /// A worker the runtime cannot start because it is unavailable is marked `STOPPED` (its
    /// wish to run is kept, so a later recovery brings it back); one whose load fails goes to
    /// `ERROR` with `load_failed`. Failures are logged per worker and do not stop the others.
    pub async fn recover(&self) -> Result<usize, ApiError> {
        let workers = self.list().await?;
        let mut recovered = 0;
        for w in workers {
            if !w.desired_running || w.status == Status::Error {
                continue;
            }
            let lock = self.lock_for(&w.id);
            let _guard = lock.lock().await;
            if self.runtime.worker_info(&w.id).is_some() {
                continue;
            }
            match self.start_locked(&w).await {
                Ok(()) => {
                    recovered += 1;
                    self.metrics.recovered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics
                        .recovery_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(worker = %w.id, error = %e, "recovery could not start worker");
                    if !matches!(e, ApiError::LoadFailed(_)) {
                        // Not the package's fault: show the truth (not running) and keep the wish.
                        self.set_status(&w.id, Status::Stopped, None, None).await?;
                    }
                }
            }
        }
        Ok(recovered)
    }

    /// Start-up: recovery if `WORKER_RECOVERY_ON_START`, else show would-be-running workers
    /// as `STOPPED` (their wish to run is kept for `POST /v1/workers/recover`). Marks the
    /// daemon ready unless the registry itself failed.
    pub async fn startup_recovery(&self) -> Result<usize, ApiError> {
        let lease = crate::sync::lock(&self.recovery_lease).clone();
        let result = if let Some(lease) = lease {
            self.cluster_startup(&lease).await
        } else if self.config.recovery_on_start {
            self.recover().await
        } else {
            let workers = self.list().await?;
            for w in workers.iter().filter(|w| w.status == Status::Running) {
                self.set_status(&w.id, Status::Stopped, None, None).await?;
            }
            tracing::info!("WORKER_RECOVERY_ON_START is off: persisted workers were not started");
            Ok(0)
        };
        match &result {
            Ok(_) => {
                self.ready.store(true, Ordering::Release);
                self.ready_tx.send_replace(true);
            }
            Err(e) => {
                *self.recovery_error.locked() = Some(e.to_string());
            }
        }
        result
    }
}
