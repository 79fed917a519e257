//! Cluster registry: keeps this daemon's runtime in line with the shared registry.
//!
//! A worker is loaded here when its shared status is `RUNNING` and placement puts it here;
//! it is reloaded when its code changed, and unloaded when it stopped, failed, was deleted
//! or moved to other daemons. Reconciling takes the worker's lifecycle lock, so it never
//! races this daemon's own API calls, and is idempotent: it runs for every change the KV
//! watch reports (this daemon's own included) and for every worker when the members change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::recovery::{RecoveryLease, Role};
use super::{Membership, Placement};
use crate::api::error::ApiError;
use crate::bus::Bus;
use crate::control::Control;
use crate::registry::{RegistryChange, Status};

impl Control {
    /// Brings the runtime in line with the local view of worker `id`.
    pub async fn reconcile(&self, id: &str) {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let id2 = id.to_owned();
        let w = match self
            .blocking(move |r| Ok(r.store().get_worker(&id2)?))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot read the worker to reconcile it");
                return;
            }
        };
        let loaded = self.runtime().worker_info(id).is_some();
        let want = w
            .as_ref()
            .is_some_and(|w| w.status == Status::Running && self.placement().is_here(w));
        let result = match (&w, want, loaded) {
            (Some(w), true, false) => self.load_placed(w).await,
            (Some(w), true, true) => {
                let current = crate::sync::lock(&self.loaded_code).get(id).cloned();
                if current.as_deref() == Some(w.code.sha256.as_str()) {
                    Ok(())
                } else {
                    tracing::info!(worker = id, sha256 = %w.code.sha256, "reloading: the code changed on another daemon");
                    match self.spec(w).await {
                        Ok(spec) => self
                            .runtime()
                            .reload(spec)
                            .await
                            .map(|()| {
                                crate::sync::lock(&self.loaded_code)
                                    .insert(w.id.clone(), w.code.sha256.clone());
                            })
                            .map_err(ApiError::from),
                        Err(e) => Err(e),
                    }
                }
            }
            (_, false, true) => {
                tracing::info!(
                    worker = id,
                    "unloading: stopped, deleted or placed elsewhere"
                );
                self.unload(id).await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(worker = id, error = %e, "reconciling the worker with the shared registry failed");
        }
    }

    /// Loads a worker the shared registry says should run here; a failed load is the
    /// worker's `ERROR` everywhere.
    async fn load_placed(&self, w: &crate::registry::WorkerRecord) -> Result<(), ApiError> {
        self.load_into_runtime(w, None).await?;
        tracing::info!(worker = %w.id, "worker loaded on this daemon (placed here)");
        Ok(())
    }

    /// Reconciles every worker of the local view.
    pub async fn reconcile_all(&self) {
        match self.list().await {
            Ok(all) => {
                for w in all {
                    self.reconcile(&w.id).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list the workers to reconcile them"),
        }
    }

    /// Start-up with the shared registry: one daemon (the lease holder) recovers, then each
    /// daemon loads what is placed on it.
    pub(crate) async fn cluster_startup(&self, lease: &RecoveryLease) -> Result<usize, ApiError> {
        let result = match lease.acquire().await {
            Role::Leader(l) => {
                let r = if self.config().recovery_on_start {
                    self.recover().await
                } else {
                    // Shared statuses are left alone: other daemons may be running them.
                    tracing::info!(
                        "WORKER_RECOVERY_ON_START is off: recovery leader starts nothing"
                    );
                    Ok(0)
                };
                tracing::info!(
                    ok = r.is_ok(),
                    "this daemon ran the cluster's start-up recovery (recovery leader)"
                );
                l.finish(r.is_ok()).await;
                r
            }
            Role::Done(by) => {
                tracing::info!(leader = %by, "start-up recovery was done by another daemon");
                Ok(0)
            }
            Role::TimedOut => {
                tracing::warn!(
                    "no daemon finished the start-up recovery within WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS; skipping it (POST /v1/workers/recover runs it by hand)"
                );
                Ok(0)
            }
        };
        self.reconcile_all().await;
        result
    }
}

/// Applies the registry watch's changes and follows the members, until `stop`.
pub fn spawn(
    control: Arc<Control>,
    bus: Arc<dyn Bus>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<RegistryChange>,
    membership: Arc<Membership>,
    stop: CancellationToken,
) {
    let placement: Arc<Placement> = control.placement().clone();
    // Members first: placement must know them before the start-up recovery places workers.
    let members_control = control.clone();
    let members_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            match membership.members().await {
                Ok(m) => {
                    let ids: Vec<String> = m
                        .iter()
                        .filter_map(|v| v["instance"].as_str().map(str::to_owned))
                        .collect();
                    if placement.set_members(ids) && members_control.is_ready() {
                        tracing::info!(members = ?placement.members(), "cluster members changed; re-placing workers");
                        members_control.reconcile_all().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster members; placement keeps the last list")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = members_stop.cancelled() => return,
            }
        }
    });
    tokio::spawn(async move {
        // Changes that arrive during start-up are applied after it (it reconciles everything).
        let mut ready = control.ready_watch();
        tokio::select! {
            _ = ready.wait_for(|r| *r) => {}
            _ = stop.cancelled() => return,
        }
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = stop.cancelled() => return,
            };
            let Some(c) = change else { return };
            // The topic's events wait for its worker whatever daemon created it.
            if c.deleted {
                bus.hold(&c.worker_id, None);
            } else if let Some(t) = &c.topic {
                bus.hold(&c.worker_id, Some(t));
            }
            control.reconcile(&c.worker_id).await;
        }
    });
}
