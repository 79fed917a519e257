//! `POST /v1/gateway/invoke-json`: the original API gateway's REST form of the gRPC calls,
//! `{"service":"workmanager","method":"CreateWorker","request_data":"<JSON>"}` ->
//! `{success, status, message, response_data}`. It runs the same operations as the gRPC
//! service ([`crate::grpc::ops`]); the route needs `read`, and each method then needs its own
//! scope (`admin` for changes), as its gRPC and REST twins do. Changes are audited here.

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest as _, Request, State};

use super::AppState;
use super::auth::Principal;
use super::error::{ApiError, ApiJson};
use crate::audit::AuditRecord;
use crate::grpc::json::{InvokeJsonRequest, InvokeJsonResponse};
use crate::grpc::methods::Method;
use crate::grpc::ops::Ops;
use crate::listen::Peer;

/// The handler: a failed call is a 200 with `success: false`, the gRPC status name and the
/// REST error code; a malformed envelope (400) and a missing scope (403) are REST errors.
pub async fn invoke_json(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<InvokeJsonResponse>, ApiError> {
    // The authorization middleware put the caller here (the route is never public).
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(ApiError::Unauthorized)?;
    let peer = req.extensions().get::<ConnectInfo<Peer>>().cloned();
    let ApiJson(body) = ApiJson::<InvokeJsonRequest>::from_request(req, &state).await?;
    let sec = &state.control.config().security;
    if let Some(method) = Method::parse(&body.method)
        && body.service.eq_ignore_ascii_case("workmanager")
        && !super::auth::allows(&principal.scopes, method.need(), None, sec.metrics_public)
    {
        // A scope the caller lacks is the REST answer (403), as on the twin's route.
        let scope = method.need().scope_name(None);
        return Err(ApiError::Forbidden(format!(
            "{} lacks the scope '{scope}' that workmanager/{} needs; use a token that has it (workmanager token create --scope {scope})",
            principal.who,
            method.name()
        )));
    }
    let ops = Ops::new(state.clone());
    let resp = crate::grpc::json::gateway(&ops, &principal, &body).await;
    if let Some(method) = Method::parse(&body.method)
        && let Some(action) = method.audit_action()
    {
        let data: serde_json::Value = serde_json::from_str(&body.request_data).unwrap_or_default();
        let out: serde_json::Value = serde_json::from_str(&resp.response_data).unwrap_or_default();
        state.security.audit.record(&AuditRecord {
            who: principal.who.clone(),
            action,
            request: format!("POST /v1/gateway/invoke-json {}", method.name()),
            worker_id: data["id"]
                .as_str()
                .or_else(|| out["id"].as_str())
                .map(str::to_owned),
            package_sha256: None,
            status: if resp.success { 200 } else { 400 },
            remote: match peer {
                Some(ConnectInfo(Peer { addr: Some(a), .. })) => a.to_string(),
                Some(_) => "unix".into(),
                None => "in-process".into(),
            },
        });
    }
    Ok(Json(resp))
}
