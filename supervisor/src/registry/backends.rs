//! The registry behind the runtime's ports: the dispatcher's status sink (a worker's fall into
//! ERROR) and the gateway's built-in `state` and `workmanager` services.

use crate::dispatcher::StatusSink;
use crate::events::ErrorType;
use crate::gateway::GatewayBackend;
use crate::registry::{LastError, Registry, Status};

/// The dispatcher reports a worker's fall into ERROR through the registry.
pub struct RegistryStatus(pub Registry);

impl StatusSink for RegistryStatus {
    fn worker_failed(&self, worker_id: &str, error_type: ErrorType, message: &str) {
        let last = LastError {
            error_type: error_type.as_str().to_string(),
            message: message.to_string(),
            at: crate::registry::now_rfc3339(),
        };
        if let Err(e) = self.0.set_status(worker_id, Status::Error, Some(last)) {
            tracing::error!(worker = worker_id, "recording ERROR failed: {e}");
        }
    }
}

/// The gateway's built-in `state` and `workmanager` services over the registry.
pub struct RegistryGateway(pub Registry);

impl GatewayBackend for RegistryGateway {
    fn state_get(&self, worker_id: &str, key: &str) -> Result<Option<String>, String> {
        self.0
            .store()
            .state_get(worker_id, key)
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| e.to_string())
    }

    fn state_set(
        &self,
        worker_id: &str,
        key: &str,
        value: &str,
        max_keys: u64,
    ) -> Result<crate::gateway::StateWrite, String> {
        use crate::registry::TagOutcome;
        match self
            .0
            .store()
            .state_set(worker_id, key, value.as_bytes(), max_keys)
            .map_err(|e| e.to_string())?
        {
            TagOutcome::LimitReached => Ok(crate::gateway::StateWrite::TooManyKeys),
            // An unknown worker (deleted while its call ran) writes nothing, as before.
            TagOutcome::Set | TagOutcome::NotFound => Ok(crate::gateway::StateWrite::Written),
        }
    }

    fn state_delete(&self, worker_id: &str, key: &str) -> Result<bool, String> {
        self.0
            .store()
            .state_delete(worker_id, key)
            .map_err(|e| e.to_string())
    }

    fn workmanager(
        &self,
        method: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, (i32, String)> {
        use crate::gateway::{STATUS_BACKEND, STATUS_BAD_REQUEST, STATUS_UNKNOWN};
        let brief = |w: &crate::registry::WorkerRecord| {
            serde_json::json!({
                "id": w.id, "topic": w.topic, "group": w.group,
                "mime_type": w.mime_type, "status": w.status.as_str(),
            })
        };
        match method {
            "ListWorkers" => {
                let all = self
                    .0
                    .store()
                    .list_workers()
                    .map_err(|e| (STATUS_BACKEND, e.to_string()))?;
                Ok(serde_json::json!({"workers": all.iter().map(brief).collect::<Vec<_>>()}))
            }
            "GetWorker" => {
                let id = request
                    .get("id")
                    .and_then(|v| v.as_str())
                    .ok_or((STATUS_BAD_REQUEST, "GetWorker needs an 'id'".to_string()))?;
                match self.0.store().get_worker(id) {
                    Ok(Some(w)) => Ok(brief(&w)),
                    Ok(None) => Err((STATUS_UNKNOWN, format!("no worker {id}"))),
                    Err(e) => Err((STATUS_BACKEND, e.to_string())),
                }
            }
            other => Err((
                STATUS_UNKNOWN,
                format!("workmanager has no read call '{other}' (ListWorkers, GetWorker)"),
            )),
        }
    }
}
