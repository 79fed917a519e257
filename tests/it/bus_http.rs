//! The topic endpoints: publish in the three CloudEvents modes and its errors (through
//! `Router::oneshot`), and the SSE stream read by a real HTTP client from a real server.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wm_supervisor::api::topics::{TopicLimits, router};
use wm_supervisor::bus::{Bus, Consumer, SqliteBus, SqliteBusOptions};

use crate::bus_store::{WAIT, recv};

struct Fixture {
    _dir: tempfile::TempDir,
    bus: Arc<SqliteBus>,
    app: axum::Router,
    shutdown: CancellationToken,
}

fn fixture(limits: TopicLimits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(dir.path(), SqliteBusOptions::default()).unwrap();
    let shutdown = CancellationToken::new();
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let app = router(dyn_bus, limits, shutdown.clone());
    Fixture {
        _dir: dir,
        bus,
        app,
        shutdown,
    }
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

fn post(topic: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(format!("/v1/topics/{topic}/events"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

fn structured(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "urn:test", "type": "com.example.ping",
           "data": {"n": 1}, "correlationid": "c-1"})
}

async fn next(c: &mut Consumer) -> wm_shared::CloudEvent {
    recv(c).await.event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_structured_batch_and_binary_mode() {
    let f = fixture(TopicLimits::default());
    let mut c = f.bus.consume("orders", "w");

    let (s, v) = call(
        &f.app,
        post(
            "orders",
            Some("application/cloudevents+json; charset=utf-8"),
            structured("s1").to_string(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1);
    let seq = v["seqs"][0].as_u64().unwrap();
    let d = recv(&mut c).await;
    assert_eq!(d.seq, seq);
    assert_eq!(d.event.id, "s1");
    assert_eq!(d.event.extension("correlationid"), Some("c-1"));
    assert_eq!(d.event.data.as_deref(), Some(br#"{"n":1}"#.as_slice()));

    // Plain application/json carrying a CloudEvent object is structured mode.
    let (s, _) = call(
        &f.app,
        post(
            "orders",
            Some("application/json"),
            structured("j1").to_string(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(next(&mut c).await.id, "j1");

    let batch = json!([structured("b1"), structured("b2"), structured("b3")]);
    let (s, v) = call(
        &f.app,
        post(
            "orders",
            Some("application/cloudevents-batch+json"),
            batch.to_string(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["accepted"], 3);
    let seqs: Vec<u64> = v["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    for id in ["b1", "b2", "b3"] {
        assert_eq!(next(&mut c).await.id, id);
    }

    let req = Request::post("/v1/topics/orders/events")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "urn:test")
        .header("ce-type", "com.example.bin")
        .header("ce-subject", "a%20b")
        .header("ce-correlationid", "c-9")
        .header("ce-tenant", "t%C3%A9")
        .header("content-type", "application/octet-stream")
        .body(Body::from(vec![0u8, 1, 2, 255]))
        .unwrap();
    let (s, v) = call(&f.app, req).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let e = next(&mut c).await;
    assert_eq!(e.id, "bin-1");
    assert_eq!(e.ty, "com.example.bin");
    assert_eq!(e.subject.as_deref(), Some("a b"));
    assert_eq!(e.extension("tenant"), Some("té"));
    assert_eq!(e.extensions()[0].0, "correlationid");
    assert_eq!(
        e.datacontenttype.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(e.data.as_deref(), Some([0u8, 1, 2, 255].as_slice()));

    // An empty batch is valid and accepts nothing.
    let (s, v) = call(
        &f.app,
        post("orders", Some("application/cloudevents-batch+json"), "[]"),
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::ACCEPTED, json!({"accepted": 0, "seqs": []}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_use_the_api_error_shape() {
    let f = fixture(TopicLimits {
        max_body_bytes: 512,
        max_batch_events: 2,
        ..TopicLimits::default()
    });
    let ce = Some("application/cloudevents+json");
    let missing_type = json!({"specversion": "1.0", "id": "1", "source": "s"}).to_string();
    let bad_ext = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "Bad": "x"})
        .to_string();
    let batch_bad =
        json!([structured("ok"), {"specversion": "1.0", "id": "2", "type": "t"}]).to_string();
    let batch_big = json!([structured("1"), structured("2"), structured("3")]).to_string();
    let long_topic = "t".repeat(201);
    let cases: Vec<(Request<Body>, StatusCode, &str, &str)> = vec![
        (
            post("orders", ce, "{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "not valid JSON",
        ),
        (
            post("orders", ce, missing_type),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "required attribute 'type' is missing",
        ),
        (
            post("orders", ce, bad_ext),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "extension name 'Bad' is invalid",
        ),
        (
            post(
                "orders",
                Some("application/cloudevents-batch+json"),
                batch_bad,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "at index 1 of the batch: required attribute 'source'",
        ),
        (
            post(
                "orders",
                Some("application/cloudevents-batch+json"),
                structured("x").to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "must be a JSON array",
        ),
        (
            post(
                "orders",
                Some("application/cloudevents-batch+json"),
                batch_big,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the limit is 2",
        ),
        (
            post("orders", ce, "x".repeat(513)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "limit of 512 bytes",
        ),
        (
            post("orders", Some("text/plain"), "hello"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "content type 'text/plain' is not a CloudEvents mode",
        ),
        (
            post("bad%20topic", ce, structured("1").to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "topic name 'bad topic' is invalid",
        ),
        (
            post(&long_topic, ce, structured("1").to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "topic name",
        ),
        (
            Request::post("/v1/topics/orders/events")
                .header("ce-specversion", "1.0")
                .header("ce-id", "1")
                .header("ce-type", "t")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "required attribute 'source' is missing",
        ),
        (
            Request::post("/v1/topics/orders/events")
                .header("ce-specversion", "1.0")
                .header("ce-id", "1")
                .header("ce-type", "t")
                .header("ce-source", "s%zz")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "header 'ce-source' is not valid text",
        ),
    ];
    for (req, status, code, needle) in cases {
        let uri = req.uri().clone();
        let (s, v) = call(&f.app, req).await;
        assert_eq!(s, status, "{uri}: {v}");
        assert_eq!(v["error"]["code"], code, "{uri}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{uri}: '{msg}' lacks '{needle}'");
    }
    // An oversize body without a content-length (chunked) is refused too.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 100]))),
    );
    let (s, v) = call(&f.app, post("orders", ce, Body::from_stream(chunks))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    assert_eq!(f.bus.metrics().stored(), 0, "nothing invalid was stored");

    // A closed bus answers 503 without leaking store details.
    f.bus.close().await;
    let (s, v) = call(&f.app, post("orders", ce, structured("1").to_string())).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
}

/// One parsed SSE event.
#[derive(Debug, PartialEq)]
struct SseEvent {
    event: String,
    id: String,
    data: Value,
}

/// Reads SSE events from a streaming response until `n` arrived (comments are skipped).
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or None when the stream ended.
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() {
                    return Some(SseEvent {
                        event,
                        id,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("SSE stream stalled")
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_published_events_in_order_to_two_watchers_and_ends_on_shutdown() {
    let f = fixture(TopicLimits {
        sse_keep_alive: Duration::from_millis(100),
        ..TopicLimits::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = f.shutdown.clone();
    let server = tokio::spawn(
        axum::serve(listener, f.app.clone())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future(),
    );
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/topics/feed/events");
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        watchers.push(SseReader::new(resp));
    }
    // Another topic's events must not show up.
    let other = client
        .post(format!("http://{addr}/v1/topics/other/events"))
        .header("content-type", "application/cloudevents+json")
        .body(structured("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    let mut seqs = Vec::new();
    for i in 0..5 {
        let mut ev = structured(&format!("e{i}"));
        ev["type"] = json!(format!("com.example.t{i}"));
        let resp = client
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(ev.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        seqs.push(v["seqs"][0].as_u64().unwrap());
    }
    // A keep-alive comment goes by (100 ms interval) without disturbing the events.
    tokio::time::sleep(Duration::from_millis(250)).await;
    for w in &mut watchers {
        for (i, seq) in seqs.iter().enumerate() {
            let e = w.next_event().await.expect("stream ended early");
            assert_eq!(e.event, format!("com.example.t{i}"));
            assert_eq!(e.id, seq.to_string());
            assert_eq!(e.data["id"], format!("e{i}"));
            assert_eq!(e.data["data"], json!({"n": 1}));
            assert_eq!(e.data["correlationid"], "c-1");
        }
    }
    // Shutdown ends the streams cleanly and lets the server stop.
    f.shutdown.cancel();
    for w in &mut watchers {
        assert!(w.next_event().await.is_none());
    }
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refuses_a_bad_topic() {
    let f = fixture(TopicLimits::default());
    let req = Request::get("/v1/topics/a:b/events")
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(&f.app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_argument");
}
