//! Watchers (the SSE stream) and replay.
//!
//! Every daemon runs one ordered push consumer over all topics from "new" and fans events
//! out to the watchers of their topic, so a watcher on any daemon sees what any daemon
//! published. Replay reads a topic from a stream sequence with an ephemeral consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, push};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use wm_shared::CloudEvent;

use super::{Shared, nats_err};
use crate::bus::{BusError, Published, ReplayPage};
use crate::sync::lock;

/// Starts the fan-out task (errors only if the first consumer cannot be created).
pub async fn start(s: Arc<Shared>) -> Result<(), async_nats::Error> {
    let consumer = s
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: s.conn.client.new_inbox(),
            filter_subject: s.names.all_topics(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                _ = s.cancel.cancelled() => return,
            };
            match next {
                None => {
                    tracing::error!(
                        "the watch consumer ended; SSE streams of this daemon see no new events until it restarts"
                    );
                    return;
                }
                // The ordered consumer recreates itself after gaps and reconnects.
                Some(Err(e)) => tracing::warn!(error = %e, "watch consumer error"),
                Some(Ok(m)) => fan_out(&s, &m),
            }
        }
    });
    Ok(())
}

fn fan_out(s: &Shared, m: &async_nats::jetstream::Message) {
    let Some(topic) = s.names.topic_of(m.subject.as_str()) else {
        return;
    };
    let tx = {
        let map = lock(&s.watchers);
        match map.get(&topic) {
            Some(tx) if tx.receiver_count() > 0 => tx.clone(),
            _ => return,
        }
    };
    let Ok(info) = m.info() else { return };
    match CloudEvent::from_flatbuffer(&m.payload) {
        Ok(event) => {
            let _ = tx.send(Arc::new(Published::new(info.stream_sequence, topic, event)));
        }
        Err(e) => {
            tracing::warn!(topic, error = %e, "skipped a message that is not a workmanager event")
        }
    }
}

/// A live feed of `topic`.
pub fn subscribe(s: &Shared, topic: &str) -> broadcast::Receiver<Arc<Published>> {
    let mut map = lock(&s.watchers);
    if s.closed.load(std::sync::atomic::Ordering::Acquire) {
        return broadcast::channel(1).1;
    }
    map.retain(|_, tx| tx.receiver_count() > 0);
    map.entry(topic.to_string())
        .or_insert_with(|| broadcast::channel(s.opts.watch_capacity).0)
        .subscribe()
}

/// Up to `limit` events of `topic` after sequence `after`.
pub async fn replay(
    s: &Shared,
    topic: &str,
    after: u64,
    limit: usize,
) -> Result<ReplayPage, BusError> {
    let info = s
        .stream
        .get_info()
        .await
        .map_err(|e| nats_err("read the stream state", e))?;
    // Everything below the first stored sequence has left the window; per-topic limits
    // (TOPIC_RETENTION_EVENTS) remove a topic's oldest events without moving it, which is not
    // reported (docs/cluster.md).
    let evicted_through = if info.state.first_sequence > after + 1 {
        info.state.first_sequence - 1
    } else {
        0
    };
    let start = (after + 1).max(info.state.first_sequence).max(1);
    if start > info.state.last_sequence {
        return Ok(ReplayPage {
            events: Vec::new(),
            evicted_through,
        });
    }
    let c = s
        .stream
        .create_consumer(consumer::pull::Config {
            filter_subject: s.names.subject(topic),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("create a replay consumer", e))?;
    let mut events = Vec::new();
    let mut batch = c
        .fetch()
        .max_messages(limit)
        .messages()
        .await
        .map_err(|e| nats_err("fetch a replay page", e))?;
    while let Some(m) = batch.next().await {
        let m = m.map_err(|e| nats_err("read a replay page", e))?;
        let Ok(i) = m.info() else { continue };
        let seq = i.stream_sequence;
        if let Ok(event) = CloudEvent::from_flatbuffer(&m.payload) {
            events.push(Arc::new(Published::new(seq, topic.to_string(), event)));
        }
    }
    // It would go by itself after the inactive threshold; deleting it now saves the server.
    let name = c.cached_info().name.clone();
    let _ = s.stream.delete_consumer(&name).await;
    Ok(ReplayPage {
        events,
        evicted_through,
    })
}
