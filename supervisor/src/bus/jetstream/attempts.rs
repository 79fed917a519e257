//! Untried hand-outs, so that `Delivery::deliveries` counts attempts on JetStream too.
//!
//! JetStream counts every hand-out (`delivered`), also one a daemon gave back untried (a worker
//! stopping with events queued, a consumer leaving). The bus contract counts attempts, so each
//! untried give-back is recorded in a KV bucket (key: stream sequence) that every daemon reads
//! for redeliveries (`delivered` > 1) only: the first delivery of an event costs nothing extra.
//! The bucket's entries age out after a day; settling an event removes its entry.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::kv;

use crate::sync::lock;

/// The discounts: a KV bucket shared by the cluster, with this daemon's view cached.
pub struct Attempts {
    kv: kv::Store,
    local: Mutex<HashMap<u64, u32>>,
}

impl Attempts {
    pub fn new(kv: kv::Store) -> Self {
        Attempts {
            kv,
            local: Mutex::default(),
        }
    }

    /// Untried hand-outs of `seq` so far.
    pub async fn untried(&self, seq: u64) -> u32 {
        if let Some(n) = lock(&self.local).get(&seq) {
            return *n;
        }
        match self.kv.get(seq.to_string()).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot read the untried hand-outs of an event; its attempt count may be one too high");
                0
            }
        }
    }

    /// One more untried hand-out of `seq` (`known`: the count already known for it).
    pub async fn add_untried(&self, seq: u64, known: u32) {
        let n = known + 1;
        lock(&self.local).insert(seq, n);
        if let Err(e) = self.kv.put(seq.to_string(), n.to_string().into()).await {
            tracing::warn!(seq, error = %e, "cannot record an untried hand-out; the event's attempt count may be one too high");
        }
    }

    /// `seq` reached its outcome: forget it (best effort; the bucket ages entries out anyway).
    pub async fn forget(&self, seq: u64) {
        lock(&self.local).remove(&seq);
        if let Err(e) = self.kv.purge(seq.to_string()).await {
            tracing::debug!(seq, error = %e, "cannot purge an attempts entry; it ages out");
        }
    }
}
