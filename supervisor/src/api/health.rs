//! `/health` (readiness), `/health/live`, `/metrics`, `/openapi.json`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// The OpenAPI 3.1 document, kept by hand next to the code.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /health`: `Healthy` (200) once start-up recovery finished and the registry answers,
/// else `Degraded` while recovery runs or `Unhealthy` (503), in the original's shape.
pub async fn health(State(state): State<AppState>) -> Response {
    let started = Instant::now();
    let control = state.control.clone();
    let (recovery_status, recovery_desc) = match (control.is_ready(), control.recovery_error()) {
        (true, _) => ("Healthy", "recovery finished".to_owned()),
        (false, Some(e)) => ("Unhealthy", format!("recovery failed: {e}")),
        (false, None) => ("Degraded", "recovery is running".to_owned()),
    };
    let registry = tokio::task::spawn_blocking(move || control.registry().store().get_worker(""))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let (registry_status, registry_desc) = match registry {
        Ok(_) => ("Healthy", "registry answers".to_owned()),
        Err(e) => {
            tracing::error!(error = %e, "health check: registry failed");
            (
                "Unhealthy",
                "registry does not answer; see the daemon log".to_owned(),
            )
        }
    };
    let extra = state.control.run_health_checks();
    let extra_unhealthy = extra.iter().any(|(_, ok, _)| !ok);
    let overall =
        if recovery_status == "Unhealthy" || registry_status == "Unhealthy" || extra_unhealthy {
            "Unhealthy"
        } else if recovery_status == "Degraded" {
            "Degraded"
        } else {
            "Healthy"
        };
    let code = if overall == "Healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let elapsed = started.elapsed();
    let mut body = json!({
        "status": overall,
        "totalDuration": format!("{:.6}s", elapsed.as_secs_f64()),
        "entries": {
            "recovery": { "status": recovery_status, "description": recovery_desc },
            "registry": { "status": registry_status, "description": registry_desc },
        }
    });
    for (name, ok, desc) in extra {
        let status = if ok { "Healthy" } else { "Unhealthy" };
        body["entries"][name] = json!({ "status": status, "description": desc });
    }
    (code, Json(body)).into_response()
}

/// `GET /health/live`: the process answers.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "Healthy" }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let control = state.control.clone();
    let workers = match control.list().await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let mut out = String::with_capacity(4096);
    control.metrics().render(&workers, &mut out);
    control.runtime().render_metrics(&mut out);
    control.metrics().render_sources(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
