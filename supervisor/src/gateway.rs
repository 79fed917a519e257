//! `gateway_call` from plugins: JSON in, JSON out, as the original's gateway does.
//!
//! Built-in services:
//! - `pubsub` / `PublishEvent`: `{"topic", "data", "metadata": {"ce-type", "ce-source", "ce-id",
//!   "ce-subject", ...}}` (the original API's shape) or `{"topic", "event": <structured CloudEvent>}`;
//!   answers `{"seq": n}`.
//! - `state` / `Get`, `Set`, `Delete`: `{"key"[, "value"]}`, keys private to the calling worker;
//!   `Get` answers `{"value": "..."}` or `{"value": null}`.
//! - `workmanager` / read calls of the API (`ListWorkers`, `GetWorker`).
//!
//! Anything else goes to the configured gateway over HTTP (`POST {base}/v1/gateway/invoke-json`
//! with `{service, method, request_data}`), or fails with "no gateway configured".
//!
//! Status codes returned to the plugin (gateway_call's return value): 0 success, 1 bad request,
//! 2 unknown service or method, 3 the backend failed, 4 timed out, 5 refused by a host input
//! limit (a rate, a quota, a call in the name of a worker not on the calling host).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wm_shared::CloudEvent;
use wm_shared::protocol::{GatewayCall, GatewayReply};

use crate::bus::Bus;

pub const STATUS_OK: i32 = 0;
pub const STATUS_BAD_REQUEST: i32 = 1;
pub const STATUS_UNKNOWN: i32 = 2;
pub const STATUS_BACKEND: i32 = 3;
pub const STATUS_TIMEOUT: i32 = 4;
pub const STATUS_REFUSED: i32 = 5;

/// The reply to a call refused before it was served (rate limit, identity); `why` says which
/// limit, naming its setting.
pub fn refusal(call_id: u64, why: &str) -> GatewayReply {
    GatewayReply {
        call_id,
        status: STATUS_REFUSED,
        payload: json!({"error": why}).to_string().into_bytes(),
        error: why.to_string(),
    }
}

/// What a `state` write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWrite {
    Written,
    /// The key is new and the worker already has `STATE_MAX_KEYS` keys: nothing was written.
    TooManyKeys,
}

/// Per-worker quotas of the `state` service.
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    /// `STATE_MAX_KEYS`: keys one worker may hold.
    pub max_keys: u64,
    /// `STATE_MAX_VALUE_BYTES`: the largest value.
    pub max_value_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_keys: 10_000,
            max_value_bytes: 1 << 20,
        }
    }
}

/// What the built-in services need from the daemon (the registry implements it).
pub trait GatewayBackend: Send + Sync + 'static {
    fn state_get(&self, worker_id: &str, key: &str) -> Result<Option<String>, String>;
    /// Writes unless the key is new and the worker has `max_keys` keys already.
    fn state_set(
        &self,
        worker_id: &str,
        key: &str,
        value: &str,
        max_keys: u64,
    ) -> Result<StateWrite, String>;
    fn state_delete(&self, worker_id: &str, key: &str) -> Result<bool, String>;
    /// Read-only API calls: `ListWorkers`, `GetWorker {id}`.
    fn workmanager(&self, method: &str, request: &Value) -> Result<Value, (i32, String)>;
}

/// Routes plugin gateway calls.
pub struct Gateway {
    bus: Arc<dyn Bus>,
    backend: Arc<dyn GatewayBackend>,
    forward: Option<Forward>,
    state_limits: StateLimits,
    /// The largest encoded event a worker's ring carries (`RING_MAX_FRAME_BYTES` less the
    /// frame overhead): a plugin may not publish what no worker could be sent.
    max_event_bytes: usize,
}

struct Forward {
    base: String,
    client: reqwest::Client,
}

/// The largest request accepted (a plugin is hostile).
const MAX_VALUE_BYTES: usize = 1 << 20;

impl Gateway {
    /// `forward_base`: the external gateway's base URL (`VIRTUFIN_API_GATEWAY_URL`), if any.
    pub fn new(
        bus: Arc<dyn Bus>,
        backend: Arc<dyn GatewayBackend>,
        forward_base: Option<String>,
        timeout: Duration,
    ) -> Gateway {
        let forward = forward_base.and_then(|base| {
            reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map(|client| Forward {
                    base: base.trim_end_matches('/').to_string(),
                    client,
                })
                .map_err(|e| tracing::error!("gateway forwarding disabled: {e}"))
                .ok()
        });
        Gateway {
            bus,
            backend,
            forward,
            state_limits: StateLimits::default(),
            max_event_bytes: usize::MAX,
        }
    }

    /// Sets the largest event a plugin may publish (see [`crate::pool::guard::max_event_bytes`]).
    pub fn with_max_event_bytes(mut self, max: usize) -> Gateway {
        self.max_event_bytes = max;
        self
    }

    /// Sets the `state` quotas (`STATE_MAX_KEYS`, `STATE_MAX_VALUE_BYTES`).
    pub fn with_state_limits(mut self, limits: StateLimits) -> Gateway {
        self.state_limits = limits;
        self
    }

    /// Handles one call and builds the reply frame.
    pub async fn handle(&self, call: GatewayCall) -> GatewayReply {
        let (status, payload, error) = match self.dispatch(&call).await {
            Ok(v) => (STATUS_OK, v.to_string().into_bytes(), String::new()),
            Err((status, msg)) => {
                tracing::warn!(worker = %call.worker_id, service = %call.service, method = %call.method, status, "gateway call failed: {msg}");
                (status, json!({"error": msg}).to_string().into_bytes(), msg)
            }
        };
        GatewayReply {
            call_id: call.call_id,
            status,
            payload,
            error,
        }
    }

    async fn dispatch(&self, call: &GatewayCall) -> Result<Value, (i32, String)> {
        if call.payload.len() > MAX_VALUE_BYTES {
            return Err((
                STATUS_BAD_REQUEST,
                format!(
                    "request of {} bytes is over the {MAX_VALUE_BYTES}-byte limit",
                    call.payload.len()
                ),
            ));
        }
        let request: Value = if call.payload.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&call.payload)
                .map_err(|e| (STATUS_BAD_REQUEST, format!("the request is not JSON: {e}")))?
        };
        match (call.service.as_str(), call.method.as_str()) {
            ("pubsub", "PublishEvent") => self.publish(&call.worker_id, &request).await,
            ("state", m) => self.state(&call.worker_id, m, &request),
            ("workmanager", m) => self.backend.workmanager(m, &request),
            (service, method) => self.forward(service, method, &request).await,
        }
    }

    async fn publish(&self, worker_id: &str, req: &Value) -> Result<Value, (i32, String)> {
        let topic = req.get("topic").and_then(Value::as_str).ok_or((
            STATUS_BAD_REQUEST,
            "PublishEvent needs a string 'topic'".to_string(),
        ))?;
        if !crate::dispatcher::rules::valid_topic(topic) {
            return Err((
                STATUS_BAD_REQUEST,
                format!("'{topic}' is not a valid topic name"),
            ));
        }
        let event = if let Some(ev) = req.get("event") {
            CloudEvent::from_json_value(ev).map_err(|e| (STATUS_BAD_REQUEST, e.to_string()))?
        } else {
            event_from_metadata(worker_id, req).map_err(|e| (STATUS_BAD_REQUEST, e))?
        };
        let len = event.to_flatbuffer().len();
        if len > self.max_event_bytes {
            return Err((
                STATUS_REFUSED,
                format!(
                    "the event encodes to {len} bytes, over the {} bytes a worker's ring carries (RING_MAX_FRAME_BYTES less the frame overhead)",
                    self.max_event_bytes
                ),
            ));
        }
        let seqs = self
            .bus
            .publish(topic, vec![event])
            .await
            .map_err(|e| (STATUS_BACKEND, e.to_string()))?;
        Ok(json!({"seq": seqs.first()}))
    }

    fn state(&self, worker_id: &str, method: &str, req: &Value) -> Result<Value, (i32, String)> {
        let key = req
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= 512)
            .ok_or((
                STATUS_BAD_REQUEST,
                "state calls need a 'key' string of 1-512 bytes".to_string(),
            ))?;
        let backend = |e: String| (STATUS_BACKEND, e);
        match method {
            "Get" => Ok(json!({"value": self.backend.state_get(worker_id, key).map_err(backend)?})),
            "Set" => {
                let value = match req.get("value") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return Err((STATUS_BAD_REQUEST, "Set needs a 'value'".to_string())),
                };
                let limits = self.state_limits;
                if value.len() > limits.max_value_bytes {
                    return Err((
                        STATUS_REFUSED,
                        format!(
                            "value of {} bytes is over STATE_MAX_VALUE_BYTES ({}); nothing was stored",
                            value.len(),
                            limits.max_value_bytes
                        ),
                    ));
                }
                match self
                    .backend
                    .state_set(worker_id, key, &value, limits.max_keys)
                    .map_err(backend)?
                {
                    StateWrite::Written => Ok(json!({})),
                    StateWrite::TooManyKeys => Err((
                        STATUS_REFUSED,
                        format!(
                            "the worker already has STATE_MAX_KEYS ({}) state keys; delete one or overwrite an existing key",
                            limits.max_keys
                        ),
                    )),
                }
            }
            "Delete" => {
                Ok(json!({"deleted": self.backend.state_delete(worker_id, key).map_err(backend)?}))
            }
            other => Err((
                STATUS_UNKNOWN,
                format!("state has no method '{other}' (Get, Set, Delete)"),
            )),
        }
    }

    async fn forward(
        &self,
        service: &str,
        method: &str,
        req: &Value,
    ) -> Result<Value, (i32, String)> {
        let Some(fwd) = &self.forward else {
            return Err((
                STATUS_UNKNOWN,
                format!(
                    "unknown service '{service}' and no gateway configured to forward to (set VIRTUFIN_API_GATEWAY_URL)"
                ),
            ));
        };
        let body = json!({"service": service, "method": method, "request_data": req.to_string()});
        let resp = fwd
            .client
            .post(format!("{}/v1/gateway/invoke-json", fwd.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    (STATUS_TIMEOUT, format!("gateway timed out: {e}"))
                } else {
                    (STATUS_BACKEND, format!("gateway unreachable: {e}"))
                }
            })?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| {
            (
                STATUS_BACKEND,
                format!("gateway answered {status} with a body that is not JSON: {e}"),
            )
        })?;
        if v.get("success").and_then(Value::as_bool) == Some(false) || !status.is_success() {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("gateway reported failure");
            return Err((STATUS_BACKEND, msg.to_string()));
        }
        match v.get("response_data") {
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| (STATUS_BACKEND, format!("response_data is not JSON: {e}"))),
            Some(other) => Ok(other.clone()),
            None => Ok(json!({})),
        }
    }
}

/// The original API's publish shape: `data` is the payload (a JSON string or any JSON value),
/// CloudEvent attributes travel as `ce-` metadata.
fn event_from_metadata(worker_id: &str, req: &Value) -> Result<CloudEvent, String> {
    let meta = req.get("metadata").and_then(Value::as_object);
    let attr = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut ev = CloudEvent::new(
        attr("ce-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        attr("ce-type").unwrap_or_else(|| "com.virtufin.workmanager.worker.event".to_string()),
        attr("ce-source")
            .unwrap_or_else(|| format!("urn:com.virtufin.workmanager:worker/{worker_id}")),
    );
    ev.subject = attr("ce-subject");
    ev.datacontenttype = attr("ce-datacontenttype").or(Some("application/json".to_string()));
    ev.data = match req.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone().into_bytes()),
        Some(other) => Some(other.to_string().into_bytes()),
    };
    if let Some(m) = meta {
        for (k, v) in m {
            if let (Some(name), Some(v)) = (k.strip_prefix("ce-"), v.as_str())
                && !matches!(
                    name,
                    "id" | "type" | "source" | "subject" | "datacontenttype" | "specversion"
                )
            {
                ev.set_extension(name, v).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_attributes_and_extensions() {
        let req = json!({"topic": "t", "data": "{\"a\":1}", "metadata": {
            "ce-type": "x.y", "ce-id": "id1", "ce-source": "urn:s", "ce-correlationid": "c9"}});
        let ev = event_from_metadata("w", &req).unwrap();
        assert_eq!(
            (ev.id.as_str(), ev.ty.as_str(), ev.source.as_str()),
            ("id1", "x.y", "urn:s")
        );
        assert_eq!(ev.data.as_deref(), Some(br#"{"a":1}"#.as_slice()));
        assert_eq!(ev.extension("correlationid"), Some("c9"));

        let bare = event_from_metadata("w7", &json!({"topic": "t", "data": {"n": 2}})).unwrap();
        assert_eq!(bare.source, "urn:com.virtufin.workmanager:worker/w7");
        assert_eq!(bare.data.as_deref(), Some(br#"{"n":2}"#.as_slice()));

        let bad = json!({"topic": "t", "metadata": {"ce-Bad Name": "x"}});
        assert!(event_from_metadata("w", &bad).is_err());
    }
}
