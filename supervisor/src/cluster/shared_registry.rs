//! `serve` wiring of `REGISTRY_BACKEND=jetstream`: the store, the recovery lease and the
//! reconcile loop.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::{Backend, Membership, NatsConnection, RecoveryLease};
use crate::bus::Bus;
use crate::codestore::CodeStore;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::registry::{JetStreamStore, RegistryChange, RegistryError, SqliteStore, Store};

/// What `Daemon::with_store` opens the registry with.
pub type StoreOpener =
    Box<dyn FnOnce(SqliteStore, &CodeStore) -> Result<Arc<dyn Store>, RegistryError>>;

/// The store opener for the configured registry backend and, for the shared one, the
/// receiver of its changes.
pub fn store_opener(config: &Config) -> (StoreOpener, Option<UnboundedReceiver<RegistryChange>>) {
    if config.cluster.registry != Backend::JetStream {
        return (Box::new(|local, _| Ok(Arc::new(local))), None);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let nats = config.cluster.nats.clone();
    let opener: StoreOpener = Box::new(move |local, codes| {
        let store = JetStreamStore::open(&nats, &super::instance_id(), local, codes.clone(), tx)?;
        tracing::info!(bucket = %format!("{}_REGISTRY", nats.prefix), "registry on NATS JetStream KV; every worker loaded");
        Ok(Arc::new(store))
    });
    (opener, Some(rx))
}

/// Opens the recovery lease and starts following the registry and the members.
pub async fn start(
    daemon: &Daemon,
    conn: &NatsConnection,
    config: &Config,
    changes: UnboundedReceiver<RegistryChange>,
    members: Arc<Membership>,
    bus: &Arc<dyn Bus>,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    let s = &config.cluster;
    let lease = RecoveryLease::open(
        conn,
        &s.nats.prefix,
        s.nats.replicas,
        s.recovery_lease_ttl,
        s.recovery_acquire_timeout,
        super::instance_id(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| {
        format!(
            "opening the recovery lease bucket {}_RECOVERY on NATS",
            s.nats.prefix
        )
    })?;
    let lease = Arc::new(lease);
    daemon.control().set_recovery_lease(lease.clone());
    daemon.add_metrics(move |out| lease.render_prometheus(out));
    super::reconcile::spawn(
        daemon.control().clone(),
        bus.clone(),
        changes,
        members,
        token.clone(),
    );
    Ok(())
}
