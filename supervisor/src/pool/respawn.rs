//! When a slot respawns its host: the failure count, the delay it sets, and the queue that
//! publishes a slot's lifecycle events without holding up the respawn.

use std::time::Duration;

/// The consecutive-failure count that sets the next respawn delay ([`backoff`]).
///
/// It grows with deaths nobody can be charged with (a host that cannot stay up by itself: a
/// broken runtime, the OOM killer, a kill from outside) and starts again after a host stayed up
/// `stable_after` or died of a known culprit call. A culprit is dealt with by retries and the
/// crash-loop quarantine; making the host back off for it would only stall the healthy workers
/// sharing the host (up to 30 s per crash once the count has grown, in the chaos soak).
pub fn next_failures(failures: u32, stayed_up: bool, has_culprit: bool) -> u32 {
    if stayed_up || has_culprit {
        1
    } else {
        failures.saturating_add(1)
    }
}

/// The delay before respawning a host after `failures` consecutive deaths ([`next_failures`]):
/// the first death of a series respawns at once (like kubelet's first restart: a warm standby
/// makes that cheap, and a death charged to a culprit is bounded by the crash-loop quarantine,
/// not by waiting), then `base`, doubling per further death, capped.
pub fn respawn_delay(base: Duration, max: Duration, failures: u32) -> Duration {
    if failures <= 1 {
        Duration::ZERO
    } else {
        backoff(base, max, failures - 1)
    }
}

/// Publishes a slot's lifecycle events one after the other in background tasks, so the
/// respawn does not wait for their durable commits; `flush` waits for all queued so far.
#[derive(Default)]
pub(super) struct LifecycleQueue {
    last: Option<tokio::task::JoinHandle<()>>,
}

impl LifecycleQueue {
    /// Queues `publish` after everything queued before it.
    pub(super) fn then(&mut self, publish: impl std::future::Future<Output = ()> + Send + 'static) {
        let before = self.last.take();
        self.last = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            publish.await;
        }));
    }

    pub(super) async fn flush(&mut self) {
        if let Some(last) = self.last.take() {
            let _ = last.await;
        }
    }
}

/// Exponential backoff: `base * 2^(n-1)`, capped.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}
