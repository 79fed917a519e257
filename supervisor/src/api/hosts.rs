//! `GET /v1/hosts` and `GET /v1/engines`: the runtime's view of the pool and the engines.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

/// `GET /v1/hosts`.
pub async fn hosts(State(state): State<AppState>) -> Json<Value> {
    let hosts: Vec<Value> = state
        .control
        .runtime()
        .hosts()
        .into_iter()
        .map(|h| {
            let mut host = json!({
                "id": h.id,
                "pid": h.pid,
                "mimeType": h.engine.mime(),
                "language": crate::runtime::language(h.engine),
                "isolation": h.isolation.as_str(),
                "workers": h.workers,
                "restarts": h.restarts,
                "crashes": h.crashes,
                "rssBytes": h.rss_bytes,
                "sandbox": h.sandbox.as_ref().map(|l| json!({
                    "seccomp": l.seccomp,
                    "landlockAbi": l.landlock_abi,
                    "namespaces": l.namespaces,
                    "uid": l.uid.map(|(u, _)| u),
                    "gid": l.uid.map(|(_, g)| g),
                    "layers": crate::pool::layers::Layer::ALL
                        .iter()
                        .filter(|x| l.has(**x))
                        .map(|x| x.name())
                        .collect::<Vec<_>>(),
                })),
                "identityViolations": h.identity_violations,
                "flagged": h.identity_violations > 0,
            });
            // Only a host spawned with a worker's own limits has the key (docs/operations.md).
            if !h.limits.is_empty() {
                host["limits"] = json!(h.limits);
            }
            host
        })
        .collect();
    // Warm standby hosts (HOST_STANDBY): idle, no workers, adopted by the next respawn. The key
    // is left out while there is none, so the answer without standby hosts stays as it was.
    let standby: Vec<Value> = state
        .control
        .runtime()
        .standby_hosts()
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "pid": s.pid,
                "mimeType": s.engine.mime(),
                "language": crate::runtime::language(s.engine),
                "rssBytes": s.rss_bytes,
            })
        })
        .collect();
    if standby.is_empty() {
        return Json(json!({ "hosts": hosts }));
    }
    Json(json!({ "hosts": hosts, "standby": standby }))
}

/// `GET /v1/engines`.
pub async fn engines(State(state): State<AppState>) -> Json<Value> {
    let engines: Vec<Value> = state
        .control
        .runtime()
        .engines()
        .into_iter()
        .map(|e| {
            json!({
                "mimeType": e.mime,
                "language": e.language,
                "available": e.available,
                "reason": e.reason,
            })
        })
        .collect();
    Json(json!({ "engines": engines }))
}
