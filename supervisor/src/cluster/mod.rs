//! Cluster mode: several daemons sharing one bus on NATS JetStream (docs/cluster.md).
//!
//! - [`settings`]: `BUS_BACKEND`, `REGISTRY_BACKEND`, `NATS_*`, validated like every setting.
//! - [`connect`]: one NATS connection per daemon from those settings (credentials, TLS,
//!   several URLs, reconnect forever); readiness follows its state.
//!
//! - [`locks`]: group locks across daemons, leases in a KV bucket.
//! - [`members`]: membership heartbeats in a KV bucket, for `GET /v1/cluster`.
//! - [`placement`]: which daemons run a worker (rendezvous hashing over the members).
//! - [`reconcile`]: with the shared registry, loads and unloads workers as it changes.
//! - [`recovery`]: the recovery leader lease (one daemon runs the start-up recovery).
//!
//! The bus itself is `crate::bus::JetStreamBus`.

pub mod connect;
pub mod locks;
pub mod members;
pub mod placement;
pub mod reconcile;
pub mod recovery;
pub mod settings;
pub mod shared_registry;

pub use connect::{NatsConnection, connect};
pub use locks::{ClusterLocks, Lease};
pub use members::Membership;
pub use placement::{Placement, PlacementView};
pub use recovery::RecoveryLease;
pub use settings::{Backend, ClusterSettings, NatsAuth, NatsSettings, Secret};

use std::sync::Arc;

use anyhow::Context as _;

use crate::bus::{Bus, JetStreamBus, JetStreamBusOptions};
use crate::config::Config;

/// This daemon's name on NATS (connection name, lifecycle data): `workmanager@<host>:<pid>`.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("workmanager@{host}:{}", std::process::id())
}

/// `BUS_BACKEND=jetstream`: connects to NATS and opens the bus and the group lease bucket there.
pub async fn open_bus(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Bus>, NatsConnection, Arc<ClusterLocks>)> {
    let s = &config.cluster.nats;
    let conn = connect(s, &instance_id()).await?;
    let bus = JetStreamBus::open(
        conn.clone(),
        s.clone(),
        JetStreamBusOptions {
            retention_events: config.topic_retention_events,
            retention: config.topic_retention,
            ..JetStreamBusOptions::default()
        },
    )
    .await
    .with_context(|| format!("opening the bus on NATS JetStream at {}", s.urls.join(",")))?;
    let locks = ClusterLocks::open(&conn, &s.prefix, s.replicas, s.lock_lease, instance_id())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "opening the group lease bucket {}_LOCKS on NATS: {e}",
                s.prefix
            )
        })?;
    tracing::info!(urls = %s.urls.join(","), stream = %format!("{}_EVENTS", s.prefix), "bus on NATS JetStream");
    Ok((bus, conn, Arc::new(locks)))
}
