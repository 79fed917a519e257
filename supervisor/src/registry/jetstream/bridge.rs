//! A blocking bridge from the synchronous [`Store`](crate::registry::Store) trait to NATS.
//!
//! The registry is called from async handlers, `spawn_blocking` threads and the runtime's
//! status callbacks alike. Waiting synchronously for a future that runs on the daemon's own
//! runtime could deadlock once every worker thread waits, so the registry has a runtime of its
//! own (one thread) and its own NATS connection driven by it: a wait here never depends on
//! the caller's runtime making progress.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

/// How long one registry operation on NATS may take before it is reported as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for loading the whole registry at start and for moving a code blob.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(120);

/// The registry's runtime thread.
pub struct Bridge {
    handle: Handle,
    /// Dropping it ends the runtime thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Starts the runtime thread.
    pub fn start() -> std::io::Result<Bridge> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("wm-registry-nats")
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("wm-registry-nats".into())
            .spawn(move || {
                // Drives every task spawned on `handle` until the bridge is dropped.
                rt.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        Ok(Bridge {
            handle,
            _stop: stop,
        })
    }

    /// Spawns a task on the registry runtime (the KV watcher).
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// Runs `fut` on the registry runtime and waits for it, at most [`OP_TIMEOUT`];
    /// `None` when it timed out or the runtime is gone.
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.run_for(OP_TIMEOUT, fut)
    }

    /// [`Bridge::run`] with another time limit (loading everything, moving code blobs).
    pub fn run_for<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            if let Ok(v) = tokio::time::timeout(limit, fut).await {
                let _ = tx.send(v);
            }
        });
        let wait = move || rx.recv().ok();
        match Handle::try_current() {
            // On a worker of the daemon's multi-thread runtime: let its other tasks move to
            // another thread while this one waits (outside a worker this just runs `wait`).
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}
