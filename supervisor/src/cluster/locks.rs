//! Group locks across daemons: a lease per group in a JetStream KV bucket.
//!
//! - Taking: `create` of the group's key, a compare-and-swap that succeeds only if the key is
//!   absent (or deleted). Ownership is decided by that result alone, never by reading the key.
//!   The revision it returns is the lease's fencing token.
//! - Holding: the bucket's `max_age` is the lease time (`NATS_LOCK_LEASE_SECONDS`; nats-server
//!   2.9 has no per-key TTL); the holder renews every third of it with an `update` that expects
//!   its last revision, so a holder that lost the lease learns it and never takes it back.
//! - Releasing: a delete that expects the holder's revision; a holder that was SIGKILLed never
//!   releases, and its key ages out of the bucket after the lease time.
//!
//! The dispatcher takes its local per-group mutex first, then this lease, so one daemon's
//! calls do not race each other for the key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use super::NatsConnection;

/// The group lease bucket of one deployment.
pub struct ClusterLocks {
    kv: kv::Store,
    lease: Duration,
    owner: String,
}

impl std::fmt::Debug for ClusterLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLocks")
            .field("lease", &self.lease)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// A group lease held by this daemon; released (expected-revision delete) when dropped.
pub struct Lease {
    kv: kv::Store,
    key: String,
    revision: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Lease {
    /// The fencing token: the KV revision of the last successful take or renewal.
    pub fn token(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// True if a renewal failed: another daemon may hold the group now.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
        let (kv, key, rev) = (self.kv.clone(), self.key.clone(), self.token());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = kv.delete_expect_revision(&key, Some(rev)).await {
                    // Someone else's lease now, or NATS away: it ages out by itself.
                    tracing::debug!(key, error = %e, "group lease release failed; it expires after NATS_LOCK_LEASE_SECONDS");
                }
            });
        }
    }
}

/// The KV key of a group: hex, since group names may hold characters keys may not.
fn key_of(group: &str) -> String {
    format!("g_{}", hex::encode(group.as_bytes()))
}

impl ClusterLocks {
    /// Opens (creating if needed) the bucket `<prefix>_LOCKS` with `lease` as its max age.
    pub async fn open(
        conn: &NatsConnection,
        prefix: &str,
        replicas: usize,
        lease: Duration,
        owner: String,
    ) -> Result<ClusterLocks, async_nats::Error> {
        let kv = crate::bus::jetstream::open_kv(
            &conn.jetstream,
            &format!("{prefix}_LOCKS"),
            replicas,
            lease,
        )
        .await?;
        Ok(ClusterLocks { kv, lease, owner })
    }

    /// Tries to take `group`'s lease once: `Ok(None)` if another daemon holds it.
    pub async fn try_acquire(&self, group: &str) -> Result<Option<Lease>, async_nats::Error> {
        let key = key_of(group);
        let revision = match self.kv.create(&key, self.owner.clone().into()).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let lease = Lease {
            kv: self.kv.clone(),
            key: key.clone(),
            revision: Arc::new(AtomicU64::new(revision)),
            lost: Arc::new(AtomicBool::new(false)),
            stop: CancellationToken::new(),
        };
        let (kv, rev, lost, stop) = (
            self.kv.clone(),
            lease.revision.clone(),
            lease.lost.clone(),
            lease.stop.clone(),
        );
        let (period, owner) = (self.lease / 3, self.owner.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.cancelled() => return,
                }
                let last = rev.load(Ordering::Acquire);
                match kv.update(&key, owner.clone().into(), last).await {
                    Ok(r) => rev.store(r, Ordering::Release),
                    Err(e) => {
                        tracing::error!(key, error = %e, "group lease renewal failed: the lease may have passed to another daemon");
                        lost.store(true, Ordering::Release);
                        return;
                    }
                }
            }
        });
        Ok(Some(lease))
    }
}
