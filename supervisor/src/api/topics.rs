//! `POST /v1/topics/{topic}/events` (publish) and `GET /v1/topics/{topic}/events` (SSE).
//!
//! Publish takes the three CloudEvents HTTP modes:
//! - structured: `content-type: application/cloudevents+json`, the body is one event;
//! - batch: `content-type: application/cloudevents-batch+json`, the body is a JSON array;
//! - binary: `ce-*` headers carry the attributes (values percent-decoded), the body is the
//!   data and `content-type` its `datacontenttype`.
//!
//! `application/json` without `ce-specversion` is read as structured mode. The answer,
//! `202 {"accepted": n, "seqs": [...]}`, comes once the events are durable.
//!
//! The SSE stream sends each event as `event: <type>`, `id: <bus sequence number>`,
//! `data: <structured JSON>`, with keep-alive comments, and ends when the daemon shuts down.
//! It starts from now on, or resumes: `Last-Event-ID: <seq>` (what `EventSource` sends when it
//! reconnects) or `?after=<seq>` replays every event of the topic after that one from the
//! store, then goes live without a gap or a duplicate; `?from=earliest` starts at the oldest
//! event of the replay window (`TOPIC_RETENTION_EVENTS`, `TOPIC_RETENTION_SECONDS`). Events
//! survive daemon restarts, so a client that reconnects after a crash misses nothing inside
//! the window. Only when what it asked for has left the window does it get a
//! `: lagged: ...` comment (a reader too slow for the live feed catches up from the store).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use wm_shared::CloudEvent;
use wm_shared::cloudevent::CloudEventError;

use crate::bus::{Bus, BusError, Published, is_valid_topic_len};

/// The topic routes with the scope each needs (part of the route table's policies).
pub const ROUTES: &[(axum::http::Method, &str, super::auth::Need)] = &[
    (
        axum::http::Method::POST,
        "/v1/topics/{topic}/events",
        super::auth::Need::Publish,
    ),
    (
        axum::http::Method::GET,
        "/v1/topics/{topic}/events",
        super::auth::Need::Subscribe,
    ),
];

/// The longest topic name the API takes.
pub const MAX_API_TOPIC_LEN: usize = 200;

/// Limits of the topic endpoints.
#[derive(Debug, Clone)]
pub struct TopicLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// How often an idle SSE stream sends a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// Largest encoded event a worker's ring can carry (`RING_MAX_FRAME_BYTES` less the frame
    /// overhead); a larger one is refused with 413 rather than stored and never delivered.
    pub max_event_bytes: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 1_000,
            sse_keep_alive: Duration::from_secs(15),
            max_event_bytes: usize::MAX,
        }
    }
}

/// Why a topic request failed; rendered as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(
        "topic name '{0}' is invalid: use 1-{MAX_API_TOPIC_LEN} characters from A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    Topic(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the batch holds {got} events; the limit is {limit} per request")]
    BatchTooLarge { got: usize, limit: usize },
    #[error(
        "event {index} of the request encodes to {len} bytes, over the {max} bytes a worker's ring carries (RING_MAX_FRAME_BYTES={frame} less the frame overhead); send less or raise RING_MAX_FRAME_BYTES"
    )]
    EventTooLarge {
        index: usize,
        len: usize,
        max: usize,
        frame: usize,
    },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("the request body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid CloudEvent: {0}")]
    Event(#[source] CloudEventError),
    #[error("invalid CloudEvent at index {index} of the batch: {source}")]
    BatchEvent {
        index: usize,
        #[source]
        source: CloudEventError,
    },
    #[error("a batch must be a JSON array of CloudEvents, got {0}")]
    NotABatch(&'static str),
    #[error("header '{0}' is not valid text (CloudEvents headers are percent-encoded UTF-8)")]
    Header(String),
    #[error(
        "content type '{0}' is not a CloudEvents mode: send application/cloudevents+json, application/cloudevents-batch+json, or the attributes as ce-* headers (binary mode)"
    )]
    ContentType(String),
    #[error("cannot resume the subscription: {0}")]
    Resume(String),
    #[error("the event bus is not available: {0}")]
    Bus(#[source] BusError),
}

impl TopicsError {
    /// The error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            TopicsError::BodyTooLarge { .. }
            | TopicsError::BatchTooLarge { .. }
            | TopicsError::EventTooLarge { .. } => "too_large",
            TopicsError::Bus(_) => "unavailable",
            _ => "invalid_argument",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            TopicsError::BodyTooLarge { .. }
            | TopicsError::BatchTooLarge { .. }
            | TopicsError::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TopicsError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for TopicsError {
    fn into_response(self) -> Response {
        let message = match &self {
            // Store details go to the log, not to the client.
            TopicsError::Bus(e) => {
                tracing::error!(error = %e, "publish failed");
                match e {
                    BusError::Closed => "the daemon is shutting down; retry later".to_string(),
                    _ => "the event store could not commit the events; retry later".to_string(),
                }
            }
            other => other.to_string(),
        };
        let body = json!({"error": {"code": self.code(), "message": message}});
        (self.status(), axum::Json(body)).into_response()
    }
}

/// Shared behind one `Arc`: axum clones the state per request, and a `CancellationToken`
/// clone takes a lock.
struct TopicsState {
    bus: Arc<dyn Bus>,
    limits: Arc<TopicLimits>,
    shutdown: CancellationToken,
}

/// The topic routes, with their own state; merge them into the API router. SSE streams end
/// when `shutdown` is cancelled.
pub fn router(bus: Arc<dyn Bus>, limits: TopicLimits, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/events", post(publish).get(subscribe))
        .with_state(Arc::new(TopicsState {
            bus,
            limits: Arc::new(limits),
            shutdown,
        }))
}

fn check_topic(topic: &str) -> Result<(), TopicsError> {
    if is_valid_topic_len(topic, MAX_API_TOPIC_LEN) {
        Ok(())
    } else {
        Err(TopicsError::Topic(topic.to_string()))
    }
}

async fn publish(
    State(s): State<Arc<TopicsState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TopicsError> {
    check_topic(&topic)?;
    let limit = s.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(TopicsError::BodyTooLarge { limit });
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(TopicsError::BodyTooLarge { limit });
        }
        Err(e) => return Err(TopicsError::Body(e.to_string())),
    };
    let mut events = parse_events(&headers, &bytes, s.limits.max_batch_events)?;
    // One span per event, continuing the trace the event carries (`traceparent`) or else
    // the request's; the stored event carries the span's context on to dispatch and replies.
    let spans: Vec<tracing::Span> = events
        .iter_mut()
        .map(|ev| {
            let span = tracing::info_span!("publish", otel.name = %format!("publish {topic}"), otel.kind = "producer", topic = %topic, id = %ev.id);
            // A span that records nothing (no trace export, info off) has no context to
            // continue or pass on.
            if !span.is_disabled() {
                crate::telemetry::continue_from_event(&span, ev);
                crate::telemetry::inject_into_event(&span, ev);
            }
            span
        })
        .collect();
    // Each event is encoded once: the size check and the store use the same bytes (and the
    // size is that of what is stored, trace context included).
    let max = s.limits.max_event_bytes;
    let mut encoded = Vec::with_capacity(events.len());
    for (index, ev) in events.into_iter().enumerate() {
        let fb = ev.to_flatbuffer();
        if fb.len() > max {
            let frame = max.saturating_add(crate::pool::guard::process_frame_overhead());
            return Err(TopicsError::EventTooLarge {
                index,
                len: fb.len(),
                max,
                frame,
            });
        }
        encoded.push((ev, fb));
    }
    let seqs = s
        .bus
        .publish_encoded(&topic, encoded)
        .await
        .map_err(TopicsError::Bus)?;
    drop(spans);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            accepted: seqs.len(),
            seqs: &seqs,
        }),
    )
        .into_response())
}

/// The body of a publish's 202, serialized straight from the sequence numbers.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    accepted: usize,
    seqs: &'a [u64],
}

/// Reads the events of a publish request in whichever mode it uses.
pub fn parse_events(
    headers: &HeaderMap,
    body: &[u8],
    max_batch: usize,
) -> Result<Vec<CloudEvent>, TopicsError> {
    // The header is borrowed, and its media type compared without case, so that a publish
    // allocates nothing to pick its mode (only binary mode keeps the header, as the event's
    // `datacontenttype`).
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map_err(|_| TopicsError::Header("content-type".into()))
        })
        .transpose()?;
    let mime = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
    let is = |want: &str| mime.is_some_and(|m| m.eq_ignore_ascii_case(want));
    if is("application/cloudevents+json") {
        Ok(vec![structured(body)?])
    } else if is("application/cloudevents-batch+json") {
        batch(body, max_batch)
    } else if headers.contains_key("ce-specversion") {
        Ok(vec![binary(
            headers,
            content_type.map(str::to_string),
            body,
        )?])
    } else if mime.is_none() || is("application/json") {
        Ok(vec![structured(body)?])
    } else {
        Err(TopicsError::ContentType(
            content_type.unwrap_or_default().to_string(),
        ))
    }
}

fn structured(body: &[u8]) -> Result<CloudEvent, TopicsError> {
    let v: Value = serde_json::from_slice(body).map_err(TopicsError::Json)?;
    CloudEvent::from_json(v).map_err(TopicsError::Event)
}

fn batch(body: &[u8], max_batch: usize) -> Result<Vec<CloudEvent>, TopicsError> {
    let v: Value = serde_json::from_slice(body).map_err(TopicsError::Json)?;
    let Value::Array(items) = v else {
        return Err(TopicsError::NotABatch(match v {
            Value::Object(_) => "an object",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        }));
    };
    if items.len() > max_batch {
        return Err(TopicsError::BatchTooLarge {
            got: items.len(),
            limit: max_batch,
        });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            CloudEvent::from_json(item).map_err(|source| TopicsError::BatchEvent { index, source })
        })
        .collect()
}

fn binary(
    headers: &HeaderMap,
    content_type: Option<String>,
    body: &[u8],
) -> Result<CloudEvent, TopicsError> {
    let mut ev = CloudEvent::default();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let raw = value
            .to_str()
            .map_err(|_| TopicsError::Header(name.as_str().to_string()))?;
        let value =
            percent_decode(raw).ok_or_else(|| TopicsError::Header(name.as_str().to_string()))?;
        match attr {
            "id" => ev.id = value,
            "source" => ev.source = value,
            "type" => ev.ty = value,
            "specversion" => ev.specversion = value,
            "subject" => ev.subject = Some(value),
            "time" => ev.time = Some(value),
            "dataschema" => ev.dataschema = Some(value),
            _ => ev.set_extension(attr, value).map_err(TopicsError::Event)?,
        }
    }
    ev.datacontenttype = content_type;
    if !body.is_empty() {
        ev.data = Some(body.to_vec());
    }
    ev.validate().map_err(TopicsError::Event)?;
    Ok(ev)
}

/// Decodes `%XX` escapes (the CloudEvents HTTP binding's header encoding); None if the
/// result is not UTF-8 or an escape is malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where a subscription starts: `Last-Event-ID` (a reconnecting client) wins over `?after=`,
/// which wins over `?from=earliest`; none of them means "from now on".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only what is published from now on.
    Live,
    /// Everything after this bus sequence number (inside the replay window), then live.
    After(u64),
    /// The oldest event of the replay window on, then live.
    Earliest,
}

/// The query of `GET /v1/topics/{topic}/events`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SubscribeQuery {
    pub after: Option<String>,
    pub from: Option<String>,
}

/// Reads where a subscription starts from its `Last-Event-ID` header and query.
pub fn start_at(headers: &HeaderMap, q: &SubscribeQuery) -> Result<StartAt, TopicsError> {
    let seq = |what: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            TopicsError::Resume(format!(
                "{what} '{v}' is not a bus sequence number (the `id:` of an SSE event)"
            ))
        })
    };
    if let Some(v) = headers.get("last-event-id") {
        let v = v
            .to_str()
            .map_err(|_| TopicsError::Header("last-event-id".into()))?;
        if !v.trim().is_empty() {
            return Ok(StartAt::After(seq("Last-Event-ID", v)?));
        }
    }
    if let Some(v) = &q.after {
        return Ok(StartAt::After(seq("after", v)?));
    }
    match q.from.as_deref() {
        None | Some("latest" | "now") => Ok(StartAt::Live),
        Some("earliest") => Ok(StartAt::Earliest),
        Some(other) => Err(TopicsError::Resume(format!(
            "from '{other}' is not understood: use from=earliest, or after=<seq>"
        ))),
    }
}

/// Events read from the store per page while catching up.
const REPLAY_PAGE: usize = 512;

/// The state of one SSE stream.
struct Stream {
    bus: Arc<dyn Bus>,
    topic: String,
    rx: broadcast::Receiver<Arc<Published>>,
    token: CancellationToken,
    /// The highest sequence number sent (or the resume point).
    last: u64,
    /// Catching up from the store (`Some(report_gap)`), or live (`None`). `report_gap`: a
    /// gap between `last` and the window is news to the client (not for `from=earliest`).
    catching_up: Option<bool>,
    /// Read from the store, not yet sent.
    page: VecDeque<Arc<Published>>,
}

impl Stream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(p) = self.page.pop_front() {
                if p.seq > self.last {
                    self.last = p.seq;
                    return Some(sse_event(&p));
                }
                continue;
            }
            if let Some(report_gap) = self.catching_up {
                let page = tokio::select! {
                    _ = self.token.cancelled() => return None,
                    r = self.bus.replay(&self.topic, self.last, REPLAY_PAGE) => r,
                };
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "SSE: cannot read the topic's history; the stream ends");
                        return None;
                    }
                };
                self.catching_up = (page.events.len() >= REPLAY_PAGE).then_some(false);
                let gap = report_gap && page.evicted_through > self.last;
                self.page.extend(page.events);
                if gap {
                    // What the page holds (open events older than the eviction point too)
                    // follows the comment.
                    let missed_from = self.last + 1;
                    return Some(Event::default().comment(format!(
                        "lagged: events {missed_from}..={} left the replay window (TOPIC_RETENTION_EVENTS, TOPIC_RETENTION_SECONDS) before they were sent",
                        page.evicted_through
                    )));
                }
                continue;
            }
            let item = tokio::select! {
                _ = self.token.cancelled() => return None,
                r = self.rx.recv() => r,
            };
            match item {
                Ok(p) if p.seq > self.last => {
                    self.last = p.seq;
                    return Some(sse_event(&p));
                }
                Ok(_) => {}
                // Nothing sent yet on a live-only stream: there is no position to resume from.
                Err(RecvError::Lagged(n)) if self.last == 0 => {
                    return Some(Event::default().comment(format!("lagged: {n} events skipped")));
                }
                // Fell behind the live feed: catch up from the store; `lagged` only if the
                // replay window no longer has what was skipped.
                Err(RecvError::Lagged(_)) => self.catching_up = Some(true),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn sse_event(p: &Published) -> Event {
    Event::default()
        .event(sse_safe(&p.event.ty))
        .id(p.seq.to_string())
        .data(p.json())
}

async fn subscribe(
    State(s): State<Arc<TopicsState>>,
    Path(topic): Path<String>,
    Query(q): Query<SubscribeQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, TopicsError> {
    check_topic(&topic)?;
    let start = start_at(&headers, &q)?;
    // Subscribed before the response goes out (and before the history is read): a client
    // that has the headers sees every event published after that, once, in order.
    let rx = s.bus.watch(&topic);
    let (last, catching_up) = match start {
        StartAt::Live => (0, None),
        StartAt::After(seq) => (seq, Some(true)),
        StartAt::Earliest => (0, Some(false)),
    };
    let state = Stream {
        bus: s.bus.clone(),
        topic,
        rx,
        token: s.shutdown.clone(),
        last,
        catching_up,
        page: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let ev = st.next().await?;
        Some((Ok(ev), st))
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(s.limits.sse_keep_alive)
            .text("keep-alive"),
    ))
}

/// An SSE field cannot hold a line break (axum panics on one); a type is user input. Borrowed
/// when there is none (every frame passes here).
fn sse_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn where_a_subscription_starts() {
        let q = |after: Option<&str>, from: Option<&str>| SubscribeQuery {
            after: after.map(str::to_string),
            from: from.map(str::to_string),
        };
        let none = HeaderMap::new();
        let mut last = HeaderMap::new();
        last.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(start_at(&none, &q(None, None)).unwrap(), StartAt::Live);
        assert_eq!(
            start_at(&none, &q(Some("7"), None)).unwrap(),
            StartAt::After(7)
        );
        assert_eq!(
            start_at(&none, &q(None, Some("earliest"))).unwrap(),
            StartAt::Earliest
        );
        // A reconnect's Last-Event-ID wins over the URL it reconnects to.
        assert_eq!(
            start_at(&last, &q(Some("7"), Some("earliest"))).unwrap(),
            StartAt::After(42)
        );
        for bad in [
            q(Some("x"), None),
            q(Some("-1"), None),
            q(None, Some("yesterday")),
        ] {
            let e = start_at(&none, &bad).unwrap_err();
            assert_eq!((e.code(), e.status().as_u16()), ("invalid_argument", 400));
        }
    }

    #[test]
    fn the_publish_mode_comes_from_the_media_type_in_any_case() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let one = br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        let two = br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},
                       {"specversion":"1.0","id":"2","source":"s","type":"t"}]"#;
        for ct in [
            None,
            Some("application/json"),
            Some("Application/CloudEvents+JSON; charset=utf-8"),
        ] {
            let headers = ct.map_or_else(HeaderMap::new, |ct| h(&[("content-type", ct)]));
            let evs = parse_events(&headers, one, 10).unwrap();
            assert_eq!((evs.len(), evs[0].id.as_str()), (1, "1"), "{ct:?}");
        }
        let batch = h(&[(
            "content-type",
            " application/CLOUDEVENTS-batch+json ; charset=utf-8",
        )]);
        assert_eq!(parse_events(&batch, two, 10).unwrap().len(), 2);
        // Binary mode keeps the header as it came, parameters included.
        let binary = h(&[
            ("content-type", "Text/Plain; charset=utf-8"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "s"),
            ("ce-type", "t"),
        ]);
        let ev = parse_events(&binary, b"hi", 10).unwrap().remove(0);
        assert_eq!(
            (ev.datacontenttype.as_deref(), ev.data.as_deref()),
            (Some("Text/Plain; charset=utf-8"), Some(b"hi".as_slice()))
        );
        let e = parse_events(&h(&[("content-type", "text/plain; x=1")]), one, 10).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("content type 'text/plain; x=1' is not a CloudEvents mode"),
            "{e}"
        );
        assert_eq!((e.code(), e.status().as_u16()), ("invalid_argument", 400));
    }

    #[test]
    fn errors_map_to_codes() {
        let e = TopicsError::BodyTooLarge { limit: 10 };
        assert_eq!((e.code(), e.status().as_u16()), ("too_large", 413));
        let e = TopicsError::Topic("a b".into());
        assert_eq!((e.code(), e.status().as_u16()), ("invalid_argument", 400));
        let e = TopicsError::Bus(BusError::Closed);
        assert_eq!((e.code(), e.status().as_u16()), ("unavailable", 503));
        assert_eq!(sse_safe("a\nb\rc"), "a b c");
        assert!(matches!(
            sse_safe("com.example.reply"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
