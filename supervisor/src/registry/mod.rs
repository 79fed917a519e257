//! The registry: what workers exist, their settings, tags, code versions, status and per-worker
//! key/value state.
//!
//! [`Store`] is the seam: [`SqliteStore`] is the embedded one; [`JetStreamStore`]
//! (`REGISTRY_BACKEND=jetstream`, docs/cluster.md) keeps the truth in NATS JetStream KV and
//! a [`SqliteStore`] as each daemon's materialised view. Every write is one transaction, so a
//! `kill -9` mid-write leaves either the old or the new state, never half of it.
//! [`Registry`] is what the rest of the daemon holds.

mod backends;
mod jetstream;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use backends::{RegistryGateway, RegistryStatus};
pub use jetstream::{JetStreamStore, RegistryChange};
pub use sqlite::SqliteStore;

use crate::runtime::Isolation;

/// A worker's status, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Not loaded; not consuming its topic.
    Stopped,
    /// Loaded and consuming its topic.
    Running,
    /// Stopped by a failure (timeout, crash loop, failed load); `lastError` says which.
    Error,
}

impl Status {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "STOPPED",
            Status::Running => "RUNNING",
            Status::Error => "ERROR",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "STOPPED" => Some(Status::Stopped),
            "RUNNING" => Some(Status::Running),
            "ERROR" => Some(Status::Error),
            _ => None,
        }
    }
}

/// Why a worker is in `ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// The lifecycle error type (`timeout`, `crash_loop`, `load_failed`, ...).
    pub error_type: String,
    /// What happened.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// Where a code version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSourceKind {
    /// Bytes in the request.
    Content,
    /// Downloaded from a URL.
    Url,
}

impl CodeSourceKind {
    fn as_str(self) -> &'static str {
        match self {
            CodeSourceKind::Content => "content",
            CodeSourceKind::Url => "url",
        }
    }
}

/// One code version (the blob is `<data>/code/<sha256>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    /// Hex sha256 of the package.
    pub sha256: String,
    /// Package size, bytes.
    pub size: u64,
    /// Content or URL.
    pub source: CodeSourceKind,
    /// The URL, for URL sources.
    pub url: Option<String>,
}

/// A worker as the registry keeps it (serialised as-is into the cluster registry's KV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// UUID.
    pub id: String,
    /// Selects the engine.
    pub mime_type: String,
    /// Input topic.
    pub topic: String,
    /// Coordination group.
    pub group: Option<String>,
    /// Stamped onto incoming events, in order.
    pub config: Vec<(String, String)>,
    /// Resource metadata, not given to the engine.
    pub tags: BTreeMap<String, String>,
    /// Shared or dedicated host.
    pub isolation: Isolation,
    /// The worker's own resource limits (empty: the engine's settings). Defaulted so records
    /// written by daemons without limits still read.
    #[serde(default)]
    pub limits: crate::worker_limits::WorkerLimits,
    /// Deadline of one call, seconds.
    pub message_timeout_seconds: u32,
    /// Calls at once.
    pub max_concurrency: u32,
    /// Current status.
    pub status: Status,
    /// Whether the user wants it running (start sets it, stop clears it); recovery starts
    /// the workers that want to run and are not in `ERROR`.
    pub desired_running: bool,
    /// Why it is in `ERROR`.
    pub last_error: Option<LastError>,
    /// The current code version.
    pub code: CodeRef,
    /// Cluster mode: how many daemons run it (`None`: every daemon). Embedded: recorded only.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// One entry of a worker's code history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1 for the code the worker was created with, then +1 per reload.
    pub version: u32,
    /// The code.
    pub code: CodeRef,
    /// When it was loaded (RFC 3339).
    pub created_at: String,
}

/// Result of setting one tag (or one state key: `LimitReached` is `STATE_MAX_KEYS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOutcome {
    /// Stored.
    Set,
    /// No such worker.
    NotFound,
    /// The tag is new and the worker already has the most tags allowed.
    LimitReached,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Opening the database failed.
    #[error("cannot open the registry at {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A schema migration failed.
    #[error("cannot migrate the registry schema to version {version}: {source}")]
    Migrate {
        /// The version that failed.
        version: usize,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer daemon.
    #[error(
        "the registry has schema version {found}, newer than this daemon knows ({known}); upgrade workmanager"
    )]
    TooNew {
        /// Version found.
        found: usize,
        /// Newest version known.
        known: usize,
    },
    /// A statement failed.
    #[error("registry {op} failed: {source}")]
    Sql {
        /// Which operation.
        op: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row could not be decoded.
    #[error("registry row for worker '{id}' is corrupt: {what}")]
    Corrupt {
        /// The worker.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// A worker with that id already exists.
    #[error("worker '{0}' already exists")]
    Exists(String),
    /// The shared registry on NATS JetStream failed (cluster mode).
    #[error(
        "the shared registry on NATS JetStream could not {op}: {message}; check the NATS connection (GET /health)"
    )]
    Shared {
        /// What was attempted.
        op: &'static str,
        /// The NATS error.
        message: String,
    },
}

/// The storage seam. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// Inserts a worker with its config, tags and first history entry.
    fn create_worker(&self, w: &WorkerRecord) -> Result<(), RegistryError>;
    /// One worker.
    fn get_worker(&self, id: &str) -> Result<Option<WorkerRecord>, RegistryError>;
    /// A worker's status when the store can tell without waiting (no lock held by another
    /// caller, no network): `Some(Ok(None))` when the worker is unknown. `None`: ask
    /// [`Store::get_worker`] off the async workers. For hot paths (`POST .../invoke`) that
    /// would otherwise pay two thread hand-offs to read one column.
    fn worker_status_now(&self, _id: &str) -> Option<Result<Option<Status>, RegistryError>> {
        None
    }
    /// Every worker, oldest first.
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, RegistryError>;
    /// Removes a worker and everything that belongs to it; false if unknown.
    fn delete_worker(&self, id: &str) -> Result<bool, RegistryError>;
    /// Makes `code` current and appends it to the history; false if unknown.
    fn set_code(&self, id: &str, code: &CodeRef, at: &str) -> Result<bool, RegistryError>;
    /// Replaces the worker's own limits and its isolation (a worker with limits is
    /// dedicated); false if unknown.
    fn set_limits(
        &self,
        id: &str,
        limits: &crate::worker_limits::WorkerLimits,
        isolation: Isolation,
        at: &str,
    ) -> Result<bool, RegistryError>;
    /// The code history, oldest first; `None` if the worker is unknown.
    fn history(&self, id: &str) -> Result<Option<Vec<HistoryEntry>>, RegistryError>;
    /// Sets status and last error (cleared unless `ERROR`), and the wish to run if given.
    fn set_status(
        &self,
        id: &str,
        status: Status,
        desired_running: Option<bool>,
        last_error: Option<&LastError>,
    ) -> Result<bool, RegistryError>;
    /// Replaces the whole tag map; false if unknown.
    fn set_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<bool, RegistryError>;
    /// Sets one tag unless that would exceed `max_tags`.
    fn set_tag(
        &self,
        id: &str,
        key: &str,
        value: &str,
        max_tags: usize,
    ) -> Result<TagOutcome, RegistryError>;
    /// Removes one tag; `None` if the worker is unknown, `Some(false)` if the tag was not set.
    fn delete_tag(&self, id: &str, key: &str) -> Result<Option<bool>, RegistryError>;
    /// Per-worker state (the gateway's `state` service): read.
    fn state_get(&self, id: &str, key: &str) -> Result<Option<Vec<u8>>, RegistryError>;
    /// Per-worker state: write. A new key is refused (nothing written) when the worker already
    /// has `max_keys` keys (`STATE_MAX_KEYS`); overwriting an existing key always works.
    fn state_set(
        &self,
        id: &str,
        key: &str,
        value: &[u8],
        max_keys: u64,
    ) -> Result<TagOutcome, RegistryError>;
    /// Per-worker state: delete; true if something was removed.
    fn state_delete(&self, id: &str, key: &str) -> Result<bool, RegistryError>;
}

/// What the daemon holds: a shared handle to the store.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry { store }
    }

    /// The store, for the operations that have no shortcut here.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// For the runtime: records a status it discovered (`ERROR` after a timeout or a crash
    /// loop, with the reason). Keeps the user's wish to run, so `POST .../start` resumes.
    /// Returns false if the worker is unknown.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        last_error: Option<LastError>,
    ) -> Result<bool, RegistryError> {
        self.store.set_status(id, status, None, last_error.as_ref())
    }
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-21T14:26:27.123Z`).
pub fn now_rfc3339() -> String {
    let t = ::time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl CodeSourceKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "content" => Some(CodeSourceKind::Content),
            "url" => Some(CodeSourceKind::Url),
            _ => None,
        }
    }
}
