//! `REGISTRY_BACKEND=jetstream`: the registry of a cluster in NATS JetStream (docs/cluster.md).
//!
//! - The truth is the KV bucket `<P>_REGISTRY`: one entry `w.<id>` per worker holding its
//!   record and code history as JSON ([`Doc`]). Every write is a compare-and-swap on the
//!   entry's revision (`create` for a new worker, `update` with the revision read), retried on
//!   a conflict with the mutation applied to the newer document, so two daemons' concurrent
//!   changes of one worker are both kept.
//! - Each daemon keeps a [`SqliteStore`] as its materialised view: reads are local; a write is
//!   applied locally right after KV accepted it; [`watch`] applies every other daemon's
//!   change and reports it as a [`RegistryChange`] so the daemon reconciles its runtime.
//! - Code blobs are in the object store `<P>_CODE` by sha256: published before a record
//!   refers to them, fetched (and the hash verified) before a record referring to them is
//!   applied locally.
//! - Gateway `state` is in the KV bucket `<P>_STATE` (`<id>.<hex key>`), read and written
//!   directly, so a call on one daemon sees what a call on another wrote.

mod bridge;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{kv, object_store};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use super::{
    CodeRef, HistoryEntry, LastError, RegistryError, SqliteStore, Status, Store, TagOutcome,
    WorkerRecord,
};
use crate::cluster::NatsSettings;
use crate::codestore::{CodeStore, sha256_hex};
use crate::sync::lock;
pub use bridge::Bridge;

/// What the KV entry of a worker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Doc {
    /// The record.
    pub worker: WorkerRecord,
    /// Its code history, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A worker changed in the shared registry (by any daemon, this one included): the runtime
/// should be reconciled with the local view of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryChange {
    /// The worker.
    pub worker_id: String,
    /// Its topic (for the bus's topic holds).
    pub topic: Option<String>,
    /// True when it was deleted.
    pub deleted: bool,
}

/// How often a compare-and-swap is retried against a newer revision before giving up.
const CAS_ATTEMPTS: usize = 32;

fn shared(op: &'static str) -> impl Fn(String) -> RegistryError {
    move |message| RegistryError::Shared { op, message }
}

fn worker_key(id: &str) -> String {
    format!("w.{id}")
}

/// State keys are hex-encoded: KV keys allow only `[-/_=.a-zA-Z0-9]`.
fn state_key(id: &str, key: &str) -> String {
    format!("{id}.{}", hex::encode(key.as_bytes()))
}

/// The KV buckets and object store of one deployment, opened on the bridge's connection.
#[derive(Clone)]
pub(crate) struct Buckets {
    pub(crate) workers: kv::Store,
    pub(crate) state: kv::Store,
    pub(crate) code: object_store::ObjectStore,
}

/// The cluster registry.
pub struct JetStreamStore {
    local: Arc<SqliteStore>,
    codes: CodeStore,
    bridge: Arc<Bridge>,
    b: Buckets,
    /// Last KV revision applied to the local view, per worker (a watch may deliver a change
    /// this daemon already applied, or an older one after a newer write).
    applied: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore").finish_non_exhaustive()
    }
}

/// What a mutation of a [`Doc`] decided.
enum Edit<T> {
    /// Write the changed document, then answer `T`.
    Write(T),
    /// Nothing to write; answer `T`.
    Keep(T),
}

impl JetStreamStore {
    /// Connects (a connection of its own, see [`bridge`]), opens or creates the buckets,
    /// loads the whole shared registry into `local` (so the daemon is not ready before it
    /// knows every worker), fetching missing code blobs, and starts watching for changes,
    /// which are reported on `changes`.
    pub fn open(
        settings: &NatsSettings,
        instance: &str,
        local: SqliteStore,
        codes: CodeStore,
        changes: tokio::sync::mpsc::UnboundedSender<RegistryChange>,
    ) -> Result<JetStreamStore, RegistryError> {
        let bridge = Arc::new(
            Bridge::start().map_err(|e| shared("start its runtime thread")(e.to_string()))?,
        );
        let (s, name) = (settings.clone(), format!("{instance} registry"));
        let b = bridge
            .run(async move { open_buckets(&s, &name).await })
            .ok_or_else(|| shared("connect")("timed out".into()))?
            .map_err(shared("open its buckets"))?;
        let store = JetStreamStore {
            local: Arc::new(local),
            codes,
            bridge: bridge.clone(),
            b,
            applied: Arc::default(),
        };
        let start = store.load_all()?;
        let w = watch::Watcher {
            local: store.local.clone(),
            codes: store.codes.clone(),
            b: store.b.clone(),
            applied: store.applied.clone(),
            changes,
        };
        bridge.spawn(w.run(start));
        Ok(store)
    }

    /// Loads every worker of the shared registry into the local view and drops local workers
    /// it no longer has. Returns the revision to watch from.
    fn load_all(&self) -> Result<u64, RegistryError> {
        let b = self.b.clone();
        let docs = self
            .bridge
            .run_for(bridge::BULK_TIMEOUT, async move {
                let start = b
                    .workers
                    .stream
                    .clone()
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence
                    + 1;
                let mut docs = Vec::new();
                let mut keys = b.workers.keys().await.map_err(|e| e.to_string())?;
                while let Some(k) = keys.next().await {
                    let k = k.map_err(|e| e.to_string())?;
                    if let Some(e) = b.workers.entry(k).await.map_err(|e| e.to_string())?
                        && e.operation == kv::Operation::Put
                    {
                        docs.push((e.revision, e.value));
                    }
                }
                Ok::<_, String>((start, docs))
            })
            .ok_or_else(|| shared("load the workers")("timed out".into()))?
            .map_err(shared("load the workers"))?;
        let (start, docs) = docs;
        let mut known = std::collections::HashSet::new();
        for (rev, bytes) in docs {
            let doc: Doc = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                id: "?".into(),
                what: format!("shared registry entry at revision {rev}: {e}"),
            })?;
            known.insert(doc.worker.id.clone());
            self.ensure_code_local(&doc.worker.code.sha256)?;
            self.apply_local(&doc, rev)?;
        }
        for w in self.local.list_workers()? {
            if !known.contains(&w.id) {
                self.local.delete_worker(&w.id)?;
            }
        }
        Ok(start)
    }

    /// Applies `doc` at `rev` to the local view unless something newer was applied already.
    fn apply_local(&self, doc: &Doc, rev: u64) -> Result<(), RegistryError> {
        apply_local(&self.local, &self.applied, doc, rev)
    }

    /// The code blob `sha256` into the object store, unless it is there already.
    fn publish_code(&self, sha256: &str) -> Result<(), RegistryError> {
        let bytes = self.codes.read(sha256).map_err(|e| RegistryError::Shared {
            op: "publish the code",
            message: format!("the local code store has no blob {sha256}: {e}"),
        })?;
        let (obj, name) = (self.b.code.clone(), sha256.to_owned());
        self.bridge
            .run_for(bridge::BULK_TIMEOUT, async move {
                if obj.info(&name).await.is_ok() {
                    return Ok(());
                }
                obj.put(name.as_str(), &mut bytes.as_slice())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .ok_or_else(|| shared("publish the code")("timed out".into()))?
            .map_err(shared("publish the code"))
    }

    fn ensure_code_local(&self, sha256: &str) -> Result<(), RegistryError> {
        let (codes, obj, sha) = (self.codes.clone(), self.b.code.clone(), sha256.to_owned());
        self.bridge
            .run_for(bridge::BULK_TIMEOUT, async move {
                fetch_code(&codes, &obj, &sha).await
            })
            .ok_or_else(|| shared("fetch the code")("timed out".into()))?
            .map_err(shared("fetch the code"))
    }

    /// Read-modify-CAS of one worker's document; `Ok(None)` when the worker is unknown.
    fn modify<T: Send + 'static>(
        &self,
        id: &str,
        op: &'static str,
        mut f: impl FnMut(&mut Doc) -> Edit<T>,
    ) -> Result<Option<T>, RegistryError> {
        let key = worker_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let (kvs, k) = (self.b.workers.clone(), key.clone());
            let entry = self
                .bridge
                .run(async move { kvs.entry(k).await.map_err(|e| e.to_string()) })
                .ok_or_else(|| shared(op)("timed out".into()))?
                .map_err(shared(op))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Ok(None);
            };
            let mut doc: Doc =
                serde_json::from_slice(&entry.value).map_err(|e| RegistryError::Corrupt {
                    id: id.to_owned(),
                    what: format!("shared registry entry: {e}"),
                })?;
            let out = match f(&mut doc) {
                Edit::Keep(t) => return Ok(Some(t)),
                Edit::Write(t) => t,
            };
            let bytes = serde_json::to_vec(&doc).map_err(|e| shared(op)(e.to_string()))?;
            let (kvs, k) = (self.b.workers.clone(), key.clone());
            let res = self
                .bridge
                .run(async move { kvs.update(k, bytes.into(), entry.revision).await })
                .ok_or_else(|| shared(op)("timed out".into()))?;
            match res {
                Ok(rev) => {
                    self.apply_local(&doc, rev)?;
                    return Ok(Some(out));
                }
                // Another daemon changed it since the read: redo the change on its version.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(shared(op)(e.to_string())),
            }
        }
        Err(shared(op)(format!(
            "worker '{id}' kept changing under {CAS_ATTEMPTS} attempts; retry"
        )))
    }

    /// Live state keys of a worker (entries whose last operation is a put).
    fn count_state_keys(&self, id: &str, at_least: u64) -> Result<u64, RegistryError> {
        let state = self.b.state.clone();
        let filter = format!("$KV.{}.{id}.>", state.name);
        let strip = format!("$KV.{}.", state.name);
        self.bridge
            .run(async move {
                let mut subjects = Vec::new();
                let mut info = state
                    .stream
                    .info_with_subjects(filter)
                    .await
                    .map_err(|e| e.to_string())?;
                while let Some(s) = info.next().await {
                    subjects.push(s.map_err(|e| e.to_string())?.0);
                }
                // Deleted keys keep a marker, so fewer subjects than the limit settles it.
                if (subjects.len() as u64) < at_least {
                    return Ok(subjects.len() as u64);
                }
                let mut live = 0;
                for s in subjects {
                    let k = s.strip_prefix(&strip).unwrap_or(&s).to_owned();
                    if let Some(e) = state.entry(k).await.map_err(|e| e.to_string())?
                        && e.operation == kv::Operation::Put
                    {
                        live += 1;
                    }
                }
                Ok::<u64, String>(live)
            })
            .ok_or_else(|| shared("count state keys")("timed out".into()))?
            .map_err(shared("count state keys"))
    }
}

/// See [`JetStreamStore::apply_local`].
fn apply_local(
    local: &SqliteStore,
    applied: &Mutex<HashMap<String, u64>>,
    doc: &Doc,
    rev: u64,
) -> Result<(), RegistryError> {
    let mut applied = lock(applied);
    if applied.get(&doc.worker.id).is_some_and(|r| *r >= rev) {
        return Ok(());
    }
    local.put_view(&doc.worker, &doc.history)?;
    applied.insert(doc.worker.id.clone(), rev);
    Ok(())
}

/// Makes sure the local code store has `sha256`, downloading it from the object store and
/// checking its hash when missing.
async fn fetch_code(
    codes: &CodeStore,
    obj: &object_store::ObjectStore,
    sha256: &str,
) -> Result<(), String> {
    if codes.blob_path(sha256).exists() {
        return Ok(());
    }
    let mut o = obj
        .get(sha256)
        .await
        .map_err(|e| format!("object {sha256} is not in the code bucket: {e}"))?;
    let mut bytes = Vec::new();
    o.read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("reading object {sha256}: {e}"))?;
    let got = sha256_hex(&bytes);
    if got != sha256 {
        return Err(format!(
            "object {sha256} has sha256 {got}; refusing it (re-deploy the worker's code)"
        ));
    }
    let codes = codes.clone();
    tokio::task::spawn_blocking(move || codes.put(&bytes).map(|_| ()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn open_buckets(s: &NatsSettings, name: &str) -> Result<Buckets, String> {
    let conn = crate::cluster::connect(s, name)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let js = &conn.jetstream;
    let p = &s.prefix;
    let kv_err = |b: &'static str| move |e: async_nats::Error| format!("bucket {b}: {e}");
    let workers = crate::bus::jetstream::open_kv(
        js,
        &format!("{p}_REGISTRY"),
        s.replicas,
        std::time::Duration::ZERO,
    )
    .await
    .map_err(kv_err("REGISTRY"))?;
    let state = crate::bus::jetstream::open_kv(
        js,
        &format!("{p}_STATE"),
        s.replicas,
        std::time::Duration::ZERO,
    )
    .await
    .map_err(kv_err("STATE"))?;
    let bucket = format!("{p}_CODE");
    // The client's `create_object_store` is what it would do; done by hand like the KV
    // buckets so it works on nats-server 2.9 (docs/cluster.md, "Server versions").
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: format!("OBJ_{bucket}"),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: s.replicas,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("object store {bucket}: {e}"))?;
    let code = js
        .get_object_store(&bucket)
        .await
        .map_err(|e| format!("object store {bucket}: {e}"))?;
    // The connection lives as long as its client handles (held by the buckets).
    drop(conn);
    Ok(Buckets {
        workers,
        state,
        code,
    })
}

impl Store for JetStreamStore {
    fn create_worker(&self, w: &WorkerRecord) -> Result<(), RegistryError> {
        self.publish_code(&w.code.sha256)?;
        let doc = Doc {
            worker: w.clone(),
            history: vec![HistoryEntry {
                version: 1,
                code: w.code.clone(),
                created_at: w.created_at.clone(),
            }],
        };
        let bytes =
            serde_json::to_vec(&doc).map_err(|e| shared("create a worker")(e.to_string()))?;
        let (kvs, k) = (self.b.workers.clone(), worker_key(&w.id));
        let rev = self
            .bridge
            .run(async move { kvs.create(k, bytes.into()).await })
            .ok_or_else(|| shared("create a worker")("timed out".into()))?;
        match rev {
            Ok(rev) => self.apply_local(&doc, rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(RegistryError::Exists(w.id.clone()))
            }
            Err(e) => Err(shared("create a worker")(e.to_string())),
        }
    }

    fn get_worker(&self, id: &str) -> Result<Option<WorkerRecord>, RegistryError> {
        self.local.get_worker(id)
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, RegistryError> {
        // The view is filled in watch order; "oldest first" means by creation.
        let mut all = self.local.list_workers()?;
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(all)
    }

    fn delete_worker(&self, id: &str) -> Result<bool, RegistryError> {
        let key = worker_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let (kvs, k) = (self.b.workers.clone(), key.clone());
            let res = self
                .bridge
                .run(async move {
                    let Some(e) = kvs.entry(k.clone()).await.map_err(|e| e.to_string())? else {
                        return Ok(None);
                    };
                    if e.operation != kv::Operation::Put {
                        return Ok(None);
                    }
                    match kvs
                        .delete_expect_revision(k.clone(), Some(e.revision))
                        .await
                    {
                        Ok(()) => Ok(Some(true)),
                        Err(err) => {
                            // A newer revision (another daemon's change) is a retry, not a failure.
                            let now = kvs.entry(k).await.ok().flatten().map(|n| n.revision);
                            if now != Some(e.revision) {
                                Ok(Some(false))
                            } else {
                                Err(err.to_string())
                            }
                        }
                    }
                })
                .ok_or_else(|| shared("delete a worker")("timed out".into()))?
                .map_err(shared("delete a worker"))?;
            match res {
                None => {
                    self.local.delete_worker(id)?;
                    return Ok(false);
                }
                // Changed since the read: read again.
                Some(false) => continue,
                Some(true) => {
                    let state = self.b.state.clone();
                    let filter = format!("$KV.{}.{id}.>", state.name);
                    let purged = self
                        .bridge
                        .run(async move { state.stream.purge().filter(filter).await });
                    if !matches!(purged, Some(Ok(_))) {
                        tracing::warn!(
                            worker = id,
                            "the deleted worker's state could not be purged from the state bucket; it stays until purged by hand"
                        );
                    }
                    self.local.delete_worker(id)?;
                    return Ok(true);
                }
            }
        }
        Err(shared("delete a worker")(format!(
            "worker '{id}' kept changing under {CAS_ATTEMPTS} attempts; retry"
        )))
    }

    fn set_code(&self, id: &str, code: &CodeRef, at: &str) -> Result<bool, RegistryError> {
        self.publish_code(&code.sha256)?;
        let (code, at) = (code.clone(), at.to_owned());
        Ok(self
            .modify(id, "record new code", |d| {
                d.worker.code = code.clone();
                d.worker.updated_at = at.clone();
                let version = d.history.last().map_or(1, |h| h.version + 1);
                d.history.push(HistoryEntry {
                    version,
                    code: code.clone(),
                    created_at: at.clone(),
                });
                Edit::Write(())
            })?
            .is_some())
    }

    fn set_limits(
        &self,
        id: &str,
        limits: &crate::worker_limits::WorkerLimits,
        isolation: crate::runtime::Isolation,
        at: &str,
    ) -> Result<bool, RegistryError> {
        let (limits, at) = (*limits, at.to_owned());
        Ok(self
            .modify(id, "set limits", |d| {
                d.worker.limits = limits;
                d.worker.isolation = isolation;
                d.worker.updated_at = at.clone();
                Edit::Write(())
            })?
            .is_some())
    }

    fn history(&self, id: &str) -> Result<Option<Vec<HistoryEntry>>, RegistryError> {
        self.local.history(id)
    }

    fn set_status(
        &self,
        id: &str,
        status: Status,
        desired_running: Option<bool>,
        last_error: Option<&LastError>,
    ) -> Result<bool, RegistryError> {
        let last_error = match status {
            Status::Error => last_error.cloned(),
            Status::Running | Status::Stopped => None,
        };
        let now = super::now_rfc3339();
        Ok(self
            .modify(id, "set a status", |d| {
                d.worker.status = status;
                d.worker.last_error = last_error.clone();
                if let Some(r) = desired_running {
                    d.worker.desired_running = r;
                }
                d.worker.updated_at = now.clone();
                Edit::Write(())
            })?
            .is_some())
    }

    fn set_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<bool, RegistryError> {
        let now = super::now_rfc3339();
        Ok(self
            .modify(id, "set tags", |d| {
                d.worker.tags = tags.clone();
                d.worker.updated_at = now.clone();
                Edit::Write(())
            })?
            .is_some())
    }

    fn set_tag(
        &self,
        id: &str,
        key: &str,
        value: &str,
        max_tags: usize,
    ) -> Result<TagOutcome, RegistryError> {
        let now = super::now_rfc3339();
        Ok(self
            .modify(id, "set a tag", |d| {
                if !d.worker.tags.contains_key(key) && d.worker.tags.len() >= max_tags {
                    return Edit::Keep(TagOutcome::LimitReached);
                }
                d.worker.tags.insert(key.to_owned(), value.to_owned());
                d.worker.updated_at = now.clone();
                Edit::Write(TagOutcome::Set)
            })?
            .unwrap_or(TagOutcome::NotFound))
    }

    fn delete_tag(&self, id: &str, key: &str) -> Result<Option<bool>, RegistryError> {
        self.modify(id, "delete a tag", |d| {
            if d.worker.tags.remove(key).is_some() {
                Edit::Write(true)
            } else {
                Edit::Keep(false)
            }
        })
    }

    fn state_get(&self, id: &str, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let (state, k) = (self.b.state.clone(), state_key(id, key));
        self.bridge
            .run(async move { state.get(k).await.map_err(|e| e.to_string()) })
            .ok_or_else(|| shared("read state")("timed out".into()))?
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(shared("read state"))
    }

    fn state_set(
        &self,
        id: &str,
        key: &str,
        value: &[u8],
        max_keys: u64,
    ) -> Result<TagOutcome, RegistryError> {
        if self.local.get_worker(id)?.is_none() {
            return Ok(TagOutcome::NotFound);
        }
        if self.state_get(id, key)?.is_none() && self.count_state_keys(id, max_keys)? >= max_keys {
            return Ok(TagOutcome::LimitReached);
        }
        let (state, k, v) = (self.b.state.clone(), state_key(id, key), value.to_vec());
        self.bridge
            .run(async move { state.put(k, v.into()).await.map_err(|e| e.to_string()) })
            .ok_or_else(|| shared("write state")("timed out".into()))?
            .map_err(shared("write state"))?;
        Ok(TagOutcome::Set)
    }

    fn state_delete(&self, id: &str, key: &str) -> Result<bool, RegistryError> {
        if self.state_get(id, key)?.is_none() {
            return Ok(false);
        }
        let (state, k) = (self.b.state.clone(), state_key(id, key));
        self.bridge
            .run(async move { state.delete(k).await.map_err(|e| e.to_string()) })
            .ok_or_else(|| shared("delete state")("timed out".into()))?
            .map_err(shared("delete state"))?;
        Ok(true)
    }
}
