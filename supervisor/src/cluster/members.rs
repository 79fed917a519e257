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

    /// Every daemon that announced itself within the last three heartbeats, by instance id,
    /// each once, and always this daemon itself.
    ///
    /// The key listing is a live consumer of the bucket: a heartbeat that lands while it runs
    /// can list a key a second time, so keys are deduplicated. And this daemon is a member
    /// whether or not its last announcement is still in the bucket (one that failed or came
    /// late under load ages out): without it, placement would move every worker off a
    /// running daemon.
    pub async fn members(&self) -> Result<Vec<Value>, async_nats::Error> {
        let mut keys = self.kv.keys().await?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k?;
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(v) = self.kv.get(&k).await?
                && let Ok(m) = serde_json::from_slice::<Value>(&v)
            {
                out.push(m);
            }
        }
        Ok(listed(&self.instance, || self.entry(), out))
    }

    /// This daemon's own entry (for the embedded-mode answer and tests).
    pub fn me(&self) -> Value {
        self.entry()
    }
}

/// `entries` from the bucket as listed: one per instance (the latest `lastSeen` wins), the
/// entry of this daemon (`instance`, built by `me`) added when missing, `self` set, sorted by
/// instance.
fn listed(instance: &str, me: impl FnOnce() -> Value, entries: Vec<Value>) -> Vec<Value> {
    let mut by_instance: std::collections::BTreeMap<String, Value> = Default::default();
    for m in entries {
        let Some(id) = m["instance"].as_str().map(str::to_owned) else {
            continue;
        };
        let newer = by_instance
            .get(&id)
            .is_none_or(|old| old["lastSeen"].as_str() < m["lastSeen"].as_str());
        if newer {
            by_instance.insert(id, m);
        }
    }
    by_instance.entry(instance.to_owned()).or_insert_with(me);
    by_instance
        .into_iter()
        .map(|(id, mut m)| {
            m["self"] = json!(id == instance);
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, last_seen: &str) -> Value {
        json!({"instance": instance, "lastSeen": last_seen, "listen": ["127.0.0.1:1"]})
    }

    #[test]
    fn a_key_listed_twice_is_one_member_with_its_latest_entry() {
        let got = listed(
            "workmanager@h:1",
            || entry("workmanager@h:1", "2026-12-04T10:00:09Z"),
            vec![
                entry("workmanager@h:2", "2026-12-04T10:00:00Z"),
                entry("workmanager@h:1", "2026-12-04T10:00:05Z"),
                entry("workmanager@h:2", "2026-12-04T10:00:05Z"),
                json!({"no": "instance"}),
            ],
        );
        let ids: Vec<(&str, &str, bool)> = got
            .iter()
            .map(|m| {
                (
                    m["instance"].as_str().unwrap(),
                    m["lastSeen"].as_str().unwrap(),
                    m["self"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                ("workmanager@h:1", "2026-12-04T10:00:05Z", true),
                ("workmanager@h:2", "2026-12-04T10:00:05Z", false),
            ]
        );
    }

    #[test]
    fn this_daemon_is_listed_when_its_announcement_aged_out() {
        let got = listed(
            "workmanager@h:1",
            || entry("workmanager@h:1", "now"),
            vec![entry("workmanager@h:2", "2026-12-04T10:00:00Z")],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().filter(|m| m["self"] == true).count(), 1);
        assert_eq!(got[0]["instance"], "workmanager@h:1");
        assert_eq!(got[0]["self"], true);
    }
}
