//! The recovery leader lease: with a shared registry, the start-up recovery (starting the
//! workers that should run) is done by one daemon, not by each.
//!
//! The lease is the key `leader` in the KV bucket `<P>_RECOVERY`, whose max age is
//! `WORKER_RECOVERY_LEASE_TTL_SECONDS`. Like the group locks, ownership is decided by the
//! result of a `create` (compare-and-swap on an absent key) alone; the leader renews it with
//! expected-revision updates every third of the TTL while recovery runs.
//! - Success: the value becomes `done` (again by expected revision) and stays until it ages
//!   out, so a daemon that starts within the TTL sees that the cluster was recovered and does
//!   not recover again (the original released the lease; with a shared registry a second
//!   recovery right after the first would only repeat it).
//! - Failure: the lease is deleted (expected revision) so another daemon can try.
//! - Leader killed: nobody renews; the key ages out after the TTL.
//!
//! Other daemons wait for `done` at most `WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS`, then skip
//! recovery (as the original did). Either way each daemon then loads the workers placed on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::NatsConnection;

const KEY: &str = "leader";

/// How a daemon's start-up recovery was decided.
#[derive(Debug)]
pub enum Role {
    /// This daemon holds the lease: recover, then call [`Leadership::finish`].
    Leader(Box<Leadership>),
    /// Another daemon finished the recovery (its instance id).
    Done(String),
    /// No `done` within the acquire timeout (another daemon still recovering, or NATS away).
    TimedOut,
}

/// The recovery lease bucket.
pub struct RecoveryLease {
    kv: kv::Store,
    ttl: Duration,
    acquire_timeout: Duration,
    instance: String,
    /// Start-up recoveries this daemon ran as leader (`workmanager_recovery_leader_runs_total`).
    pub leader_runs: AtomicU64,
}

impl std::fmt::Debug for RecoveryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryLease")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The held lease; renewed until [`finish`](Leadership::finish).
#[derive(Debug)]
pub struct Leadership {
    kv: kv::Store,
    revision: Arc<AtomicU64>,
    stop: CancellationToken,
    instance: String,
}

fn value(instance: &str, state: &str) -> String {
    json!({"instanceId": instance, "state": state, "at": crate::registry::now_rfc3339()})
        .to_string()
}

impl RecoveryLease {
    /// Opens (creating if needed) `<prefix>_RECOVERY`.
    pub async fn open(
        conn: &NatsConnection,
        prefix: &str,
        replicas: usize,
        ttl: Duration,
        acquire_timeout: Duration,
        instance: String,
    ) -> Result<RecoveryLease, async_nats::Error> {
        let kv = crate::bus::jetstream::open_kv(
            &conn.jetstream,
            &format!("{prefix}_RECOVERY"),
            replicas,
            ttl,
        )
        .await?;
        Ok(RecoveryLease {
            kv,
            ttl,
            acquire_timeout,
            instance,
            leader_runs: AtomicU64::new(0),
        })
    }

    /// Takes the lease, or learns that another daemon recovered, or gives up after the
    /// acquire timeout.
    pub async fn acquire(&self) -> Role {
        let deadline = Instant::now() + self.acquire_timeout;
        loop {
            match self
                .kv
                .create(KEY, value(&self.instance, "running").into())
                .await
            {
                Ok(rev) => return Role::Leader(Box::new(self.lead(rev))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if let Ok(Some(v)) = self.kv.get(KEY).await
                        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&v)
                        && v["state"] == "done"
                    {
                        return Role::Done(v["instanceId"].as_str().unwrap_or("?").to_owned());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the recovery lease; retrying");
                }
            }
            if Instant::now() >= deadline {
                return Role::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn lead(&self, rev: u64) -> Leadership {
        self.leader_runs.fetch_add(1, Ordering::Relaxed);
        let l = Leadership {
            kv: self.kv.clone(),
            revision: Arc::new(AtomicU64::new(rev)),
            stop: CancellationToken::new(),
            instance: self.instance.clone(),
        };
        let (kv, revision, stop, instance, period) = (
            l.kv.clone(),
            l.revision.clone(),
            l.stop.clone(),
            l.instance.clone(),
            self.ttl / 3,
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.cancelled() => return,
                }
                let last = revision.load(Ordering::Acquire);
                match kv
                    .update(KEY, value(&instance, "running").into(), last)
                    .await
                {
                    Ok(r) => revision.store(r, Ordering::Release),
                    Err(e) => {
                        tracing::error!(error = %e, "recovery lease renewal failed: another daemon may start recovering too");
                        return;
                    }
                }
            }
        });
        l
    }

    /// Prometheus lines.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP workmanager_recovery_leader_runs_total Start-up recoveries this daemon ran as the cluster's recovery leader.\n# TYPE workmanager_recovery_leader_runs_total counter\nworkmanager_recovery_leader_runs_total {}",
            self.leader_runs.load(Ordering::Relaxed)
        );
    }
}

impl Leadership {
    /// Ends the lease: `done` (kept until it ages out) on success, deleted on failure.
    pub async fn finish(self, ok: bool) {
        self.stop.cancel();
        let rev = self.revision.load(Ordering::Acquire);
        let res = if ok {
            self.kv
                .update(KEY, value(&self.instance, "done").into(), rev)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.kv
                .delete_expect_revision(KEY, Some(rev))
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot record the end of the recovery lease; it expires after WORKER_RECOVERY_LEASE_TTL_SECONDS");
        }
    }
}
