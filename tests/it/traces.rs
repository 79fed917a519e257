//! Traces (issue 16): a daemon exporting to an in-process OTLP receiver (a tonic server of the
//! OTLP trace collector service from `opentelemetry-proto`). One event published with a W3C
//! `traceparent` gives one trace: publish -> dispatch -> the host call (with the host's pid
//! and the worker id) -> the reply's publish, and the reply event carries `traceparent` in
//! that trace.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg;
use wm_testkit::sse::Sse;

/// Collects every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[test]
fn one_trace_from_publish_to_reply_with_the_host_call_in_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let otlp = listener.local_addr().unwrap();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(incoming);
    rt.spawn(server);

    let d = Daemon::start(
        DaemonOptions::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{otlp}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("WORKER_RETRY_ATTEMPTS", "1")
            .env("WORKER_RETRY_BASE_DELAY_MS", "10"),
    );
    assert!(
        d.log().contains("exporting traces over OTLP endpoint=")
            && d.log().contains("protocol=grpc"),
        "{}",
        d.log()
    );
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let r = d.send_json(
        "POST",
        "/v1/workers",
        &json!({"mimeType": "application/x-native-dll", "topic": "t.trace",
                "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(d.post(&format!("/v1/workers/{id}/start")).status, 200);
    let replies = Sse::subscribe(&d.base_url(), "t.trace.reply");
    let dead = Sse::subscribe(&d.base_url(), "t.trace-dead");
    // A REST request with a `traceparent` header continues that trace.
    let rest_trace = "0af7651916cd43dd8448eb211c80319c";
    let tp_header = format!("00-{rest_trace}-b7ad6b7169203331-01");
    let r = d.request(
        "GET",
        "/v1/workers",
        &[("traceparent", tp_header.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let ev = json!({"specversion": "1.0", "id": "tr-1", "source": "urn:test", "type": "t.trace",
                    "datacontenttype": "text/plain", "data": "hello",
                    "traceparent": format!("00-{trace_id}-{caller_span}-01"),
                    "tracestate": "test=1"});
    let r = d.send_json("POST", "/v1/topics/t.trace/events", &ev);
    assert_eq!(r.status, 202, "{}", r.text());
    let reply = replies
        .next(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no reply:\n{}", d.log()));
    let tp = reply["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the reply has no traceparent: {reply}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        parts[1], trace_id,
        "the reply continues the publisher's trace: {tp}"
    );
    assert_ne!(parts[2], caller_span, "the reply names its own span: {tp}");
    assert_eq!(reply["tracestate"], "test=1", "{reply}");

    // The spans arrive in batches (OTEL_BSP_SCHEDULE_DELAY=100 ms).
    let want = hex::decode(trace_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let find = |spans: &[Span], name: &str| spans.iter().find(|s| s.name == name).cloned();
    let (publish, dispatch, call, reply_span) = loop {
        let spans: Vec<Span> = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == want)
            .cloned()
            .collect();
        if let (Some(p), Some(di), Some(c), Some(rp)) = (
            find(&spans, "publish t.trace"),
            find(&spans, "dispatch t.trace"),
            find(&spans, "host.call"),
            find(&spans, "reply.publish"),
        ) {
            break (p, di, c, rp);
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace so far: {:?}\n{}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest_span = loop {
        let found = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace_id == hex::decode(rest_trace).unwrap())
            .cloned();
        if let Some(s) = found {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no span of the REST request in the caller's trace"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rest_span.name, "GET /v1/workers");
    assert_eq!(
        rest_span.parent_span_id,
        hex::decode("b7ad6b7169203331").unwrap()
    );
    match attr(&rest_span, "http.response.status_code") {
        Some(AnyValue::IntValue(200)) => {}
        other => panic!("http.response.status_code: {other:?}"),
    }
    // publish <- dispatch <- host call, and dispatch <- reply publish: one tree.
    assert_eq!(publish.parent_span_id, hex::decode(caller_span).unwrap());
    assert_eq!(dispatch.parent_span_id, publish.span_id);
    assert_eq!(call.parent_span_id, dispatch.span_id);
    assert_eq!(reply_span.parent_span_id, dispatch.span_id);
    assert_eq!(hex::encode(&reply_span.span_id), parts[2]);
    // A failing event: a retry, then a dead letter, both in the publisher's trace.
    let fail_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let ev = json!({"specversion": "1.0", "id": "tr-2", "source": "urn:test", "type": "t.trace",
                    "datacontenttype": "text/plain", "data": "fail",
                    "traceparent": format!("00-{fail_trace}-{caller_span}-01")});
    let r = d.send_json("POST", "/v1/topics/t.trace/events", &ev);
    assert_eq!(r.status, 202, "{}", r.text());
    let letter = dead
        .next(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no dead letter:\n{}", d.log()));
    let dtp = letter["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(dtp.starts_with(&format!("00-{fail_trace}-")), "{letter}");
    let want = hex::decode(fail_trace).unwrap();
    let (retry, dead_span, dispatch2) = loop {
        let spans: Vec<Span> = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == want)
            .cloned()
            .collect();
        if let (Some(r), Some(dl), Some(di)) = (
            find(&spans, "retry"),
            find(&spans, "dead_letter"),
            find(&spans, "dispatch t.trace"),
        ) {
            assert_eq!(
                spans.iter().filter(|s| s.name == "host.call").count(),
                2,
                "one call and one retry"
            );
            break (r, dl, di);
        }
        assert!(
            Instant::now() < deadline,
            "spans of the failing trace so far: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(retry.parent_span_id, dispatch2.span_id);
    assert_eq!(dead_span.parent_span_id, dispatch2.span_id);
    assert_eq!(
        hex::encode(&dead_span.span_id),
        dtp.split('-').nth(2).unwrap()
    );
    match attr(&call, "host.pid") {
        Some(AnyValue::IntValue(pid)) => assert!(*pid > 1, "{pid}"),
        other => panic!("host.pid: {other:?}"),
    }
    match attr(&call, "worker.id") {
        Some(AnyValue::StringValue(w)) => assert_eq!(*w, id),
        other => panic!("worker.id: {other:?}"),
    }
}

#[test]
fn otlp_over_http_protobuf_when_the_protocol_variable_asks_for_it() {
    use axum::body::Bytes;
    use prost::Message as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let otlp = listener.local_addr().unwrap();
    let sink = receiver.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = sink.0.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });

    let d = Daemon::start(
        DaemonOptions::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{otlp}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    );
    let trace = "1af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-c7ad6b7169203331-01");
    assert_eq!(
        d.request("GET", "/v1/hosts", &[("traceparent", tp.as_str())], b"")
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.trace_id == hex::decode(trace).unwrap() && s.name == "GET /v1/hosts");
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span over OTLP/HTTP:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
