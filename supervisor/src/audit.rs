//! The audit trail: every control-plane change (create, code, delete, start, stop, recover,
//! tags), with who made it, what, the worker id, the package sha256 and the outcome.
//!
//! Each record is logged (target `workmanager::audit`, level info) and handed to the sinks:
//! `workmanager serve` adds one that publishes it on the bus topic [`AUDIT_TOPIC`] as a
//! CloudEvent of type `workmanager.audit.<action>` (best effort, like lifecycle events).

use std::sync::Mutex;
use wm_shared::sync::Locked as _;

use serde_json::json;
use wm_shared::CloudEvent;

/// The bus topic of audit events.
pub const AUDIT_TOPIC: &str = "workmanager.audit";

/// One control-plane change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// `token:<name>`, `cert:CN=<cn>`, `uid:<n>` or `anonymous`.
    pub who: String,
    /// `create`, `code`, `delete`, `start`, `stop`, `recover`, `tags` or `requeue`.
    pub action: &'static str,
    /// Method and path as sent.
    pub request: String,
    /// The worker, when the request names one.
    pub worker_id: Option<String>,
    /// The worker's package after the change, when known.
    pub package_sha256: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Where it came from (remote address or `unix`).
    pub remote: String,
}

/// A receiver of audit records. Called synchronously; must not block.
pub type AuditSink = Box<dyn Fn(&AuditRecord) + Send + Sync>;

/// Logs records and passes them to the sinks.
#[derive(Default)]
pub struct Audit {
    sinks: Mutex<Vec<AuditSink>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    /// Adds a sink.
    pub fn add_sink(&self, sink: AuditSink) {
        self.sinks.locked().push(sink);
    }

    /// Records one change.
    pub fn record(&self, r: &AuditRecord) {
        tracing::info!(
            target: "workmanager::audit",
            who = %r.who,
            action = r.action,
            request = %r.request,
            worker_id = r.worker_id.as_deref().unwrap_or(""),
            package_sha256 = r.package_sha256.as_deref().unwrap_or(""),
            status = r.status,
            remote = %r.remote,
            "audit"
        );
        for s in self.sinks.locked().iter() {
            s(r);
        }
    }
}

/// The action of a control-plane route (`None`: not audited).
pub fn action_of(method: &str, path_template: &str) -> Option<&'static str> {
    let last = path_template.rsplit('/').next().unwrap_or("");
    Some(match (method, path_template, last) {
        ("POST", "/v1/workers", _) => "create",
        ("POST", _, "recover") => "recover",
        ("DELETE", "/v1/workers/{id}", _) => "delete",
        ("POST", _, "start") => "start",
        ("POST", "/v1/dead-letters/{topic}/requeue", _) => "requeue",
        ("POST", _, "stop") => "stop",
        (_, _, "code" | "code-from-url") => "code",
        ("PUT" | "DELETE", p, _) if p.contains("/tags") => "tags",
        _ => return None,
    })
}

/// The CloudEvent published on [`AUDIT_TOPIC`].
pub fn audit_event(r: &AuditRecord) -> CloudEvent {
    let mut ev = CloudEvent::new(
        uuid::Uuid::new_v4().to_string(),
        format!("workmanager.audit.{}", r.action),
        "workmanager",
    );
    ev.subject = r.worker_id.as_ref().map(|w| format!("worker/{w}"));
    ev.time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    ev.datacontenttype = Some("application/json".into());
    let data = json!({
        "who": r.who,
        "action": r.action,
        "request": r.request,
        "worker_id": r.worker_id,
        "package_sha256": r.package_sha256,
        "status": r.status,
        "remote": r.remote,
    });
    ev.data = Some(data.to_string().into_bytes());
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(action_of("POST", "/v1/workers"), Some("create"));
        assert_eq!(action_of("POST", "/v1/workers/{id}/start"), Some("start"));
        assert_eq!(action_of("PUT", "/v1/workers/{id}/code"), Some("code"));
        assert_eq!(
            action_of("DELETE", "/v1/workers/{id}/tags/{key}"),
            Some("tags")
        );
        assert_eq!(action_of("GET", "/v1/workers/{id}/tags"), None);
        assert_eq!(action_of("POST", "/v1/workers/{id}/invoke"), None);
        assert_eq!(
            action_of("POST", "/v1/dead-letters/{topic}/requeue"),
            Some("requeue")
        );
        assert_eq!(action_of("GET", "/v1/dead-letters/{topic}"), None);
    }
}
