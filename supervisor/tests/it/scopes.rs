//! Every scope, allowed and denied, on every route: table-driven from the route table's
//! policies (`wm_supervisor::api::route_policies`), so a new route joins the test by itself;
//! and every operation of `openapi.json` must have a policy.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wm_supervisor::api::auth::{Need, hash_token};
use wm_supervisor::api::{route_policies, topics};
use wm_supervisor::config::Config;
use wm_supervisor::runtime::{Runtime, Unavailable};
use wm_supervisor::{Daemon, ServeArgs};

/// (token, the scopes its config entry grants).
const TOKENS: &[(&str, &str)] = &[
    ("tok-admin-0123456789", "admin"),
    ("tok-read-0123456789", "read"),
    ("tok-invoke-0123456789", "invoke"),
    ("tok-pub-0123456789", "publish:orders.*"),
    ("tok-sub-0123456789", "subscribe:orders.*"),
    ("tok-pubother-0123456789", "publish:payments"),
];

fn daemon(dir: &std::path::Path, extra: &[(&str, String)]) -> Daemon {
    let entries = TOKENS
        .iter()
        .enumerate()
        .map(|(i, (t, s))| format!("t{i}:{}:{s}", hex::encode(hash_token(t))))
        .collect::<Vec<_>>()
        .join(",");
    // `extra` comes first: the lookup takes the first match.
    let mut env: Vec<(&str, String)> = extra.to_vec();
    env.push(("WORKMANAGER_API_TOKENS", entries));
    let args = ServeArgs {
        listen: vec!["127.0.0.1:0".into()],
        data_dir: Some(dir.to_path_buf()),
        ..ServeArgs::default()
    };
    let lookup = move |n: &str| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
    let raw = wm_supervisor::config::RawConfig::gather(&args, &lookup).unwrap();
    let config = Config::from_raw(&raw).unwrap();
    let mut d = Daemon::new(config, |_| Arc::new(Unavailable) as Arc<dyn Runtime>).unwrap();
    // The bus's topic routes, with a stand-in handler: authorization comes before it.
    d.add_routes(Router::new().route(
        "/v1/topics/{topic}/events",
        axum::routing::post(|| async { StatusCode::ACCEPTED }).get(|| async { StatusCode::OK }),
    ));
    d
}

fn concrete(path: &str, topic: &str) -> String {
    path.replace("{topic}", topic)
        .replace("{id}", "w-1")
        .replace("{key}", "k")
}

fn allowed(scope: &str, need: Need, topic: &str) -> bool {
    let orders = topic.starts_with("orders.");
    match (scope, need) {
        (_, Need::Public) | ("admin", _) => true,
        ("read", Need::Read | Need::Metrics) => true,
        ("invoke", Need::Invoke) => true,
        ("publish:orders.*", Need::Publish) => orders,
        ("subscribe:orders.*", Need::Subscribe) => orders,
        ("publish:payments", Need::Publish) => topic == "payments",
        _ => false,
    }
}

async fn call(r: &Router, method: &Method, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method.clone()).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = r
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_scope_is_allowed_and_denied_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &[]);
    let r = d.router();
    let policies = route_policies();
    assert!(policies.len() >= 25, "{} routes", policies.len());
    let mut checked = 0;
    for p in &policies {
        for topic in ["orders.eu", "payments"] {
            let uri = concrete(p.path, topic);
            // No token: 401, except the probes.
            let (s, v) = call(&r, &p.method, &uri, None).await;
            if p.need == Need::Public {
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{} {uri}", p.method);
            } else {
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{} {uri}: {v}", p.method);
                assert_eq!(v["error"]["code"], "unauthorized");
            }
            let (s, _) = call(&r, &p.method, &uri, Some("wrong-token-0123456789")).await;
            if p.need != Need::Public {
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "{} {uri} wrong token",
                    p.method
                );
            }
            for (token, scope) in TOKENS {
                let (s, v) = call(&r, &p.method, &uri, Some(token)).await;
                if allowed(scope, p.need, topic) {
                    assert!(
                        s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                        "{scope} must reach {} {uri}: {s} {v}",
                        p.method
                    );
                } else {
                    assert_eq!(
                        s,
                        StatusCode::FORBIDDEN,
                        "{scope} on {} {uri}: {v}",
                        p.method
                    );
                    assert_eq!(v["error"]["code"], "forbidden");
                    let msg = v["error"]["message"].as_str().unwrap();
                    let needed = p.need.scope_name(Some(topic));
                    assert!(msg.contains(&format!("'{needed}'")), "{msg}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 250, "{checked}");
}

#[tokio::test]
async fn metrics_can_be_public_and_daemon_topics_need_admin() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &[("WORKMANAGER_METRICS_PUBLIC", "true".into())]);
    let r = d.router();
    assert_eq!(
        call(&r, &Method::GET, "/metrics", None).await.0,
        StatusCode::OK
    );
    // publish:* does not reach the daemon's own topics (audit events cannot be forged).
    let dir2 = tempfile::tempdir().unwrap();
    let d2 = {
        let h = hex::encode(hash_token("tok-all-0123456789"));
        daemon(
            dir2.path(),
            &[("WORKMANAGER_API_TOKENS", format!("all:{h}:publish:*"))],
        )
    };
    let r2 = d2.router();
    let (s, _) = call(
        &r2,
        &Method::POST,
        "/v1/topics/workmanager.audit/events",
        Some("tok-all-0123456789"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &r2,
        &Method::POST,
        "/v1/topics/x/events",
        Some("tok-all-0123456789"),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[test]
fn every_openapi_operation_has_a_scope() {
    let spec: Value = serde_json::from_str(include_str!("../../src/api/openapi.json")).unwrap();
    let policies = route_policies();
    let mut n = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m.as_str()) {
                continue;
            }
            assert!(
                policies.iter().any(|p| p.method == m && p.path == path),
                "{m} {path} is in openapi.json but has no scope in the route table"
            );
            n += 1;
        }
    }
    assert!(n >= policies.len() - topics::ROUTES.len(), "{n}");
}
