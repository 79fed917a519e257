//! Dead-letter replay: `GET /v1/dead-letters/{topic}` lists the retained events of a
//! `<topic>-dead` topic with the reason extensions pulled out, and
//! `POST /v1/dead-letters/{topic}/requeue` publishes chosen ones (`{"seqs": [...]}`) or all
//! of them (`{"all": true}`) again on the topic they were published on, without the
//! `deadletter*` extensions. Operators use it after fixing a worker.
//!
//! Listing needs `subscribe:<topic>-dead` (dead letters carry the events' data); requeueing
//! needs `admin`, and is audited (action `requeue`) and counted
//! (`workmanager_dead_letters_requeued_total{topic}`). A requeue publishes: doing it twice
//! publishes the event twice (it keeps its `id`, so an idempotent worker can tell).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wm_shared::sync::Locked as _;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use wm_shared::CloudEvent;

use super::auth::Need;
use super::error::{ApiError, ApiJson};
use crate::bus::{Bus, DEAD_LETTER_SUFFIX, Published, is_valid_topic_len};

/// The dead-letter routes with the scope each needs (part of the route table's policies).
pub const ROUTES: &[(axum::http::Method, &str, Need)] = &[
    (
        axum::http::Method::GET,
        "/v1/dead-letters/{topic}",
        Need::Subscribe,
    ),
    (
        axum::http::Method::POST,
        "/v1/dead-letters/{topic}/requeue",
        Need::Admin,
    ),
];

/// The most dead letters one list page returns.
pub const MAX_LIST: usize = 1_000;
/// The most dead letters one requeue publishes (`all` stops there and says `more`).
pub const MAX_REQUEUE: usize = 10_000;
/// Events read from the store per replay call.
const PAGE: usize = 500;

/// Requeue counts per original topic, for `/metrics`.
#[derive(Debug, Default)]
pub struct RequeueMetrics {
    by_topic: Mutex<BTreeMap<String, u64>>,
}

impl RequeueMetrics {
    fn add(&self, topic: &str, n: u64) {
        let mut m = self.by_topic.locked();
        *m.entry(topic.to_owned()).or_default() += n;
    }

    /// Appends `workmanager_dead_letters_requeued_total` in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP workmanager_dead_letters_requeued_total Dead letters published again on their original topic.\n");
        out.push_str("# TYPE workmanager_dead_letters_requeued_total counter\n");
        for (topic, n) in self.by_topic.locked().iter() {
            let _ = writeln!(
                out,
                "workmanager_dead_letters_requeued_total{{topic=\"{topic}\"}} {n}"
            );
        }
    }
}

#[derive(Clone)]
struct DeadLettersState {
    bus: Arc<dyn Bus>,
    metrics: Arc<RequeueMetrics>,
}

/// The dead-letter routes, with their own state; merge them into the API router.
pub fn router(bus: Arc<dyn Bus>, metrics: Arc<RequeueMetrics>) -> Router {
    Router::new()
        .route(
            "/v1/dead-letters/{topic}",
            get(list).fallback(super::method_not_allowed),
        )
        .route(
            "/v1/dead-letters/{topic}/requeue",
            post(requeue).fallback(super::method_not_allowed),
        )
        .with_state(DeadLettersState { bus, metrics })
}

fn check_dead_topic(topic: &str) -> Result<(), ApiError> {
    if !is_valid_topic_len(topic, super::topics::MAX_API_TOPIC_LEN) {
        return Err(ApiError::InvalidArgument(format!(
            "topic name '{topic}' is invalid: use 1-{} characters from A-Z, a-z, 0-9, '.', '_' and '-'",
            super::topics::MAX_API_TOPIC_LEN
        )));
    }
    if !topic.ends_with(DEAD_LETTER_SUFFIX) || topic.len() == DEAD_LETTER_SUFFIX.len() {
        return Err(ApiError::InvalidArgument(format!(
            "'{topic}' is not a dead-letter topic; use '{topic}{DEAD_LETTER_SUFFIX}'"
        )));
    }
    Ok(())
}

/// The topic a dead letter came from: its `deadlettertopic`, else the name without `-dead`.
fn original_topic(dead_topic: &str, ev: &CloudEvent) -> String {
    ev.extension("deadlettertopic")
        .filter(|t| is_valid_topic_len(t, super::topics::MAX_API_TOPIC_LEN))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            dead_topic
                .strip_suffix(DEAD_LETTER_SUFFIX)
                .unwrap_or(dead_topic)
                .to_owned()
        })
}

/// One dead letter as the list shows it.
fn view(dead_topic: &str, p: &Published) -> Value {
    let ev = &p.event;
    json!({
        "seq": p.seq,
        "id": ev.id,
        "type": ev.ty,
        "source": ev.source,
        "originalTopic": original_topic(dead_topic, ev),
        "reason": ev.extension("deadletterreason"),
        "error": ev.extension("deadlettererror"),
        "attempts": ev.extension("deadletterattempts").and_then(|a| a.parse::<u64>().ok()),
        "worker": ev.extension("deadletterworker"),
        "time": ev.extension("deadlettertime"),
        "event": ev.to_json_value(),
    })
}

fn bus_error(e: crate::bus::BusError) -> ApiError {
    tracing::error!(error = %e, "dead-letter request: the bus failed");
    ApiError::Unavailable("the event store could not be read; retry later".to_owned())
}

/// `?after=&limit=` of the list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(
    State(s): State<DeadLettersState>,
    Path(topic): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    check_dead_topic(&topic)?;
    let Query(q) = query.map_err(|e| {
        ApiError::InvalidArgument(format!(
            "bad query: {e}; use ?after=<seq>&limit=<1-{MAX_LIST}>"
        ))
    })?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let page = s
        .bus
        .replay(&topic, q.after, limit)
        .await
        .map_err(bus_error)?;
    let items: Vec<Value> = page.events.iter().map(|p| view(&topic, p)).collect();
    let next = page.events.last().map(|p| p.seq);
    Ok(Json(json!({
        "topic": topic,
        "deadLetters": items,
        "next": next,
        "evictedThrough": page.evicted_through,
    })))
}

/// `POST .../requeue`: `{"seqs": [..]}` or `{"all": true}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    seqs: Vec<u64>,
    #[serde(default)]
    all: bool,
}

async fn requeue(
    State(s): State<DeadLettersState>,
    Path(topic): Path<String>,
    ApiJson(body): ApiJson<RequeueBody>,
) -> Result<Json<Value>, ApiError> {
    check_dead_topic(&topic)?;
    if body.all != body.seqs.is_empty() {
        return Err(ApiError::InvalidArgument(
            "give either \"seqs\": [sequence numbers] or \"all\": true".to_owned(),
        ));
    }
    if body.seqs.len() > MAX_REQUEUE {
        return Err(ApiError::InvalidArgument(format!(
            "{} sequence numbers given; at most {MAX_REQUEUE} per request",
            body.seqs.len()
        )));
    }
    let wanted: std::collections::BTreeSet<u64> = body.seqs.iter().copied().collect();
    // Walk the dead topic from just before the first wanted event (or its start).
    let mut after = wanted.first().map_or(0, |s| s.saturating_sub(1));
    let last_wanted = wanted.last().copied();
    let mut picked: Vec<Arc<Published>> = Vec::new();
    let mut more = false;
    loop {
        let page = s.bus.replay(&topic, after, PAGE).await.map_err(bus_error)?;
        let Some(last) = page.events.last().map(|p| p.seq) else {
            break;
        };
        for p in page.events {
            if body.all || wanted.contains(&p.seq) {
                if picked.len() == MAX_REQUEUE {
                    more = true;
                    break;
                }
                picked.push(p);
            }
        }
        after = last;
        if more || last_wanted.is_some_and(|w| last >= w) {
            break;
        }
    }
    // Publish in order, one batch per original topic.
    let mut results = Vec::with_capacity(picked.len());
    let mut by_topic: BTreeMap<String, Vec<(u64, CloudEvent)>> = BTreeMap::new();
    for p in &picked {
        let mut ev = p.event.clone();
        let names: Vec<String> = ev
            .extensions()
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with("deadletter"))
            .collect();
        for k in names {
            ev.remove_extension(&k);
        }
        by_topic
            .entry(original_topic(&topic, &p.event))
            .or_default()
            .push((p.seq, ev));
    }
    for (orig, items) in by_topic {
        let (seqs, events): (Vec<u64>, Vec<CloudEvent>) = items.into_iter().unzip();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let new = s.bus.publish(&orig, events).await.map_err(bus_error)?;
        s.metrics.add(&orig, new.len() as u64);
        tracing::info!(dead_topic = %topic, topic = %orig, count = new.len(), "dead letters requeued");
        for ((seq, id), new_seq) in seqs.into_iter().zip(ids).zip(new) {
            results.push(json!({"seq": seq, "id": id, "topic": orig, "newSeq": new_seq}));
        }
    }
    let found: std::collections::BTreeSet<u64> = picked.iter().map(|p| p.seq).collect();
    let not_found: Vec<u64> = wanted.difference(&found).copied().collect();
    Ok(Json(json!({
        "requeued": results.len(),
        "events": results,
        "notFound": not_found,
        "more": more,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_topics_and_their_origin() {
        assert!(check_dead_topic("orders-dead").is_ok());
        assert!(check_dead_topic("orders").is_err());
        assert!(check_dead_topic("-dead").is_err());
        let mut ev = CloudEvent::new("1", "t", "s");
        assert_eq!(original_topic("orders-dead", &ev), "orders");
        ev.set_extension("deadlettertopic", "a.b").unwrap();
        assert_eq!(original_topic("orders-dead", &ev), "a.b");
    }
}
