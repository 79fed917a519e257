//! How a handled delivery ends: its completion queued with the bus (the lane goes on at
//! once), then awaited by the worker's completion task, in order.
//!
//! A completion that fails to commit (a reply or a dead letter that could not be stored, or
//! the settle) gives its input back to the bus after a pause, so it is handled again rather
//! than stuck until a restart; the pause runs in a task of its own, so the completions queued
//! behind it are not held up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Step;
use crate::bus::{BoxFuture, Bus, BusError, Delivery, Outcome};

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    Replied,
    DeadLettered,
    /// Given back to the bus (on purpose, or because its completion did not commit).
    Released,
}

/// A completion queued with the bus, not yet known to be committed.
pub(super) struct Queued {
    delivery: Delivery,
    dead: bool,
    committed: BoxFuture<'static, Result<(), BusError>>,
}

/// Ends a delivery as `step` says: a completion is queued with the bus at once (a lane's
/// completions commit in order) and returned for [`settled`] to await; the lane's `permit`
/// is given back before it is durable. A delivery left unsettled goes back to the bus now.
pub(super) fn finish(
    bus: &dyn Bus,
    mut d: Delivery,
    step: Step,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<Queued> {
    match step {
        Step::Complete { outcome, publish } => {
            let dead = matches!(outcome, Outcome::DeadLettered { .. });
            let committed = bus.complete(d.seq, outcome, publish);
            drop(permit);
            Some(Queued {
                delivery: d,
                dead,
                committed,
            })
        }
        // The bus took the delivery back with a delay (JetStream's Nak): nothing to settle.
        Step::RetryLater => {
            drop(permit);
            None
        }
        Step::Unsettled { attempted } => {
            if !attempted {
                d.deliveries = d.deliveries.saturating_sub(1);
            }
            bus.release(vec![d]);
            drop(permit);
            None
        }
    }
}

/// Waits until a queued completion committed. One that failed gives its delivery back after
/// `pause` (or at once when the worker stops), in a task on `tasks`.
pub(super) async fn settled(
    bus: &Arc<dyn Bus>,
    q: Queued,
    pause: Duration,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Finished {
    match q.committed.await {
        Ok(()) if q.dead => Finished::DeadLettered,
        Ok(()) => Finished::Replied,
        Err(e) => {
            tracing::error!(error = %e, dead_letter = q.dead, "completing the event failed; it is delivered again");
            let (bus, cancel, d) = (Arc::clone(bus), cancel.clone(), q.delivery);
            tasks.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = cancel.cancelled() => {}
                }
                bus.release(vec![d]);
            });
            Finished::Released
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::{Semaphore, broadcast};
    use wm_shared::CloudEvent;

    use super::*;
    use crate::bus::{
        Consumer, DeadLetterReason, ReplayPage, dead_letter_event, dead_letter_topic,
    };
    use crate::events::ErrorType;
    use crate::sync::lock;

    /// A bus whose completions fail; it records what is given back.
    #[derive(Default)]
    struct FailingBus {
        released: Mutex<Vec<Delivery>>,
    }

    impl Bus for FailingBus {
        fn publish(
            &self,
            _: &str,
            _: Vec<CloudEvent>,
        ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
            Box::pin(async { Err(BusError::Closed) })
        }
        fn watch(&self, _: &str) -> broadcast::Receiver<Arc<crate::bus::Published>> {
            broadcast::channel(1).1
        }
        fn consume(&self, topic: &str, _: &str) -> Consumer {
            struct NoHooks;
            impl crate::bus::ConsumerHooks for NoHooks {
                fn received(&self) {}
                fn unsubscribed(&self, _: tokio::sync::mpsc::Receiver<Delivery>) {}
            }
            Consumer::new(
                topic.into(),
                tokio::sync::mpsc::channel(1).1,
                Box::new(NoHooks),
            )
        }
        fn settle(&self, _: u64, _: Outcome) -> BoxFuture<'_, Result<(), BusError>> {
            Box::pin(async { Err(BusError::Closed) })
        }
        fn complete(
            &self,
            _: u64,
            _: Outcome,
            _: Option<(String, CloudEvent)>,
        ) -> BoxFuture<'static, Result<(), BusError>> {
            Box::pin(async { Err(BusError::Closed) })
        }
        fn replay(&self, _: &str, _: u64, _: usize) -> BoxFuture<'_, Result<ReplayPage, BusError>> {
            Box::pin(async { Err(BusError::Closed) })
        }
        fn hold(&self, _: &str, _: Option<&str>) {}
        fn release(&self, deliveries: Vec<Delivery>) {
            lock(&self.released).extend(deliveries);
        }
        fn set_ready(&self) {}
        fn close(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn render_prometheus(&self, _: &mut String) {}
    }

    fn delivery(deliveries: u32) -> Delivery {
        Delivery {
            seq: 7,
            topic: "t".into(),
            event: CloudEvent::new("e-1", "t", "urn:test"),
            deliveries,
            encoded: None,
        }
    }

    async fn permit() -> tokio::sync::OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap()
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_stored_gives_the_event_back_for_a_retry() {
        let bus = Arc::new(FailingBus::default());
        let d = delivery(2);
        let reason = DeadLetterReason {
            error_type: ErrorType::Crash,
            message: "signal 11".into(),
            attempts: 2,
            worker_id: Some("w".into()),
        };
        let step = Step::Complete {
            outcome: Outcome::DeadLettered {
                reason: "crash".into(),
            },
            publish: Some((
                dead_letter_topic("t"),
                dead_letter_event("t", &d.event, &reason),
            )),
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let q = finish(bus.as_ref(), d, step, permit().await).expect("a completion");
        assert!(lock(&bus.released).is_empty(), "not before it failed");
        let dyn_bus: Arc<dyn Bus> = bus.clone();
        let done = settled(&dyn_bus, q, Duration::from_millis(20), &cancel, &tasks).await;
        assert_eq!(done, Finished::Released, "not reported as dead-lettered");
        tasks.close();
        tasks.wait().await;
        let released = lock(&bus.released).clone();
        assert_eq!(released.len(), 1, "given back after the pause");
        assert_eq!(
            (released[0].seq, released[0].deliveries),
            (7, 2),
            "the attempt counts"
        );
    }

    #[tokio::test]
    async fn a_delivery_given_back_untried_is_not_charged_an_attempt() {
        let bus = FailingBus::default();
        let step = Step::Unsettled { attempted: false };
        assert!(finish(&bus, delivery(3), step, permit().await).is_none());
        let step = Step::Unsettled { attempted: true };
        assert!(finish(&bus, delivery(3), step, permit().await).is_none());
        let counts: Vec<u32> = lock(&bus.released).iter().map(|d| d.deliveries).collect();
        assert_eq!(counts, [2, 3]);
    }
}
