//! Membership: each daemon of a cluster announces itself in the KV bucket `<P>_MEMBERS`
//! every [`HEARTBEAT`]; the bucket's max age (3 heartbeats) removes a daemon that stopped
//! announcing (nats-server 2.9 has no per-key TTL). `GET /v1/cluster` lists what is there.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::NatsConnection;

/// How often a daemon announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// This daemon's entry and the bucket of all entries.
pub struct Membership {
    kv: kv::Store,
    instance: String,
    started_at: String,
    data_dir: PathBuf,
}

/// The KV key of an instance id (`workmanager@host:pid` holds characters keys may not).
fn key_of(instance: &str) -> String {
    format!("m_{}", hex::encode(instance.as_bytes()))
}

impl Membership {
    /// Opens the bucket and starts announcing until `stop`.
    pub async fn start(
        conn: &NatsConnection,
        prefix: &str,
        replicas: usize,
        instance: String,
        data_dir: PathBuf,
        stop: CancellationToken,
    ) -> Result<Arc<Membership>, async_nats::Error> {
        let kv = crate::bus::jetstream::open_kv(
            &conn.jetstream,
            &format!("{prefix}_MEMBERS"),
            replicas,
            HEARTBEAT * 3,
        )
        .await?;
        let m = Arc::new(Membership {
            kv,
            instance,
            started_at: crate::registry::now_rfc3339(),
            data_dir,
        });
        let me = m.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.announce().await {
                    tracing::warn!(error = %e, "cannot announce this daemon in the members bucket; other daemons may list it as gone");
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = stop.cancelled() => break,
                }
            }
            // Leaving on purpose: gone from the list at once.
            let _ = me.kv.delete(key_of(&me.instance)).await;
        });
        Ok(m)
    }

    fn entry(&self) -> Value {
        // The bound addresses are known once the daemon listens (`<data-dir>/listen.addr`).
        let listen: Vec<String> = std::fs::read_to_string(self.data_dir.join("listen.addr"))
            .map(|s| {
                s.lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "instance": self.instance,
            "listen": listen,
            "startedAt": self.started_at,
            "lastSeen": crate::registry::now_rfc3339(),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    async fn announce(&self) -> Result<(), async_nats::Error> {
        self.kv
            .put(key_of(&self.instance), self.entry().to_string().into())
            .await?;
        Ok(())
    }

    /// Every daemon that announced itself within the last three heartbeats, by instance id.
    pub async fn members(&self) -> Result<Vec<Value>, async_nats::Error> {
        let mut keys = self.kv.keys().await?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k?;
            if let Some(v) = self.kv.get(&k).await?
                && let Ok(mut m) = serde_json::from_slice::<Value>(&v)
            {
                m["self"] = json!(m["instance"] == self.instance.as_str());
                out.push(m);
            }
        }
        out.sort_by(|a, b| a["instance"].as_str().cmp(&b["instance"].as_str()));
        Ok(out)
    }

    /// This daemon's own entry (for the embedded-mode answer and tests).
    pub fn me(&self) -> Value {
        self.entry()
    }
}
