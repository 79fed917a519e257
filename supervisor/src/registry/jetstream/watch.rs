//! The KV watch that applies every change of the shared registry to this daemon's view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;

use super::{Buckets, Doc, RegistryChange, apply_local, fetch_code};
use crate::codestore::CodeStore;
use crate::registry::{SqliteStore, Store as _};

/// Runs on the registry's runtime (see `bridge`).
pub(super) struct Watcher {
    pub(super) local: Arc<SqliteStore>,
    pub(super) codes: CodeStore,
    pub(super) b: Buckets,
    pub(super) applied: Arc<Mutex<HashMap<String, u64>>>,
    pub(super) changes: tokio::sync::mpsc::UnboundedSender<RegistryChange>,
}

impl Watcher {
    /// Watches from revision `from` on, forever: a broken watch (NATS restarted) is opened
    /// again from the revision after the last one handled, so no change is skipped.
    pub(super) async fn run(self, mut from: u64) {
        loop {
            match self.b.workers.watch_all_from_revision(from).await {
                Ok(mut w) => {
                    while let Some(e) = w.next().await {
                        match e {
                            Ok(e) => {
                                let rev = e.revision;
                                if !self.handle(e).await {
                                    // Not applied (its code could not be fetched): read again.
                                    break;
                                }
                                from = rev + 1;
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "the shared registry watch failed; reopening it");
                                break;
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch the shared registry; retrying in a second")
                }
            }
            if self.changes.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Applies one change; false if it must be tried again.
    async fn handle(&self, e: kv::Entry) -> bool {
        let Some(id) = e.key.strip_prefix("w.").map(str::to_owned) else {
            return true;
        };
        match e.operation {
            kv::Operation::Delete | kv::Operation::Purge => {
                let topic = self.local.get_worker(&id).ok().flatten().map(|w| w.topic);
                crate::sync::lock(&self.applied).insert(id.clone(), e.revision);
                if let Err(err) = self.local.delete_worker(&id) {
                    tracing::error!(worker = %id, error = %err, "cannot apply a shared delete to the local registry view");
                }
                let _ = self.changes.send(RegistryChange {
                    worker_id: id,
                    topic,
                    deleted: true,
                });
                true
            }
            kv::Operation::Put => {
                let doc: Doc = match serde_json::from_slice(&e.value) {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::error!(worker = %id, revision = e.revision, error = %err, "skipping a shared registry entry this daemon cannot read (a newer daemon's format?)");
                        return true;
                    }
                };
                if let Err(err) =
                    fetch_code(&self.codes, &self.b.code, &doc.worker.code.sha256).await
                {
                    tracing::error!(worker = %id, error = %err, "cannot fetch the worker's code from the object store; retrying");
                    return false;
                }
                if let Err(err) = apply_local(&self.local, &self.applied, &doc, e.revision) {
                    tracing::error!(worker = %id, error = %err, "cannot apply a shared change to the local registry view; retrying");
                    return false;
                }
                let _ = self.changes.send(RegistryChange {
                    worker_id: id,
                    topic: Some(doc.worker.topic),
                    deleted: false,
                });
                true
            }
        }
    }
}
