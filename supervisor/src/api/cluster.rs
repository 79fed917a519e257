//! `GET /v1/cluster`: the daemons of the deployment (docs/cluster.md).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /v1/cluster`: in cluster mode every daemon that announced itself in the last 15 s;
/// embedded, this daemon alone.
pub async fn cluster(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.control.membership() {
        Some(m) => {
            let members = m.members().await.map_err(|e| {
                ApiError::Unavailable(format!(
                    "cannot read the members bucket on NATS ({e}); retry when /health is ready"
                ))
            })?;
            Ok(Json(json!({"backend": "jetstream", "members": members})))
        }
        None => Ok(Json(json!({
            "backend": "embedded",
            "members": [{
                "instance": crate::cluster::instance_id(),
                "self": true,
                "version": env!("CARGO_PKG_VERSION"),
            }],
        }))),
    }
}
