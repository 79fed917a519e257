//! Lifecycle and infra CloudEvents (DESIGN.md §8), published on the bus, best effort.
//!
//! | topic | types (`com.virtufin.workmanager.` + ...) | subject |
//! |---|---|---|
//! | `workmanager.lifecycle` | `lifecycle.{registered,starting,online,degraded,stopping,stopped,failed}` | `worker/<id>` |
//! | `workmanager.lifecycle` | `lifecycle.dependencies.{started,progress,finished,failed}` (wheels) | `worker/<id>` |
//! | `workmanager.infra.worker` | `infra.worker.heartbeat` | `worker/<id>` |
//! | `workmanager.infra.host` | `infra.host.{crashed,respawned}` | `host/<id>` |
//! | `workmanager.infra.grouplock` | `infra.grouplock.{acquired,released}` | `group/<name>` |
//!
//! Every event has source `urn:com.virtufin.workmanager`, a fresh UUID v4 id, an RFC 3339 UTC
//! `time` and JSON data. Lifecycle data is `{worker_id, group, topic, error_type,
//! error_message}` with `null` for what does not apply.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wm_shared::CloudEvent;

use crate::bus::Bus;

/// The `source` of every event the daemon emits.
pub const SOURCE: &str = "urn:com.virtufin.workmanager";
/// Worker lifecycle events.
pub const LIFECYCLE_TOPIC: &str = "workmanager.lifecycle";
/// Worker heartbeats.
pub const INFRA_WORKER_TOPIC: &str = "workmanager.infra.worker";
/// Host crashes and respawns.
pub const INFRA_HOST_TOPIC: &str = "workmanager.infra.host";
/// Group lock acquisitions and releases.
pub const INFRA_GROUPLOCK_TOPIC: &str = "workmanager.infra.grouplock";
/// Prefix of lifecycle event types.
pub const LIFECYCLE_TYPE_PREFIX: &str = "com.virtufin.workmanager.lifecycle.";
/// Prefix of infra event types.
pub const INFRA_TYPE_PREFIX: &str = "com.virtufin.workmanager.infra.";

/// A worker lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Registered,
    Starting,
    Online,
    Degraded,
    Stopping,
    Stopped,
    /// Also what the seeds call the "`worker.error` lifecycle event".
    Failed,
}

impl Lifecycle {
    /// The last segment of the event type.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Registered => "registered",
            Lifecycle::Starting => "starting",
            Lifecycle::Online => "online",
            Lifecycle::Degraded => "degraded",
            Lifecycle::Stopping => "stopping",
            Lifecycle::Stopped => "stopped",
            Lifecycle::Failed => "failed",
        }
    }

    /// The full CloudEvent type, e.g. `com.virtufin.workmanager.lifecycle.failed`.
    pub fn event_type(self) -> String {
        format!("{LIFECYCLE_TYPE_PREFIX}{}", self.as_str())
    }
}

/// Why processing failed; snake_case on the wire (`error_type`, `deadletterreason`).
/// One enum for the whole daemon: the runtime's.
pub use crate::runtime::ErrorType;

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The worker an event is about.
#[derive(Debug, Clone, Copy)]
pub struct WorkerRef<'a> {
    pub id: &'a str,
    pub group: Option<&'a str>,
    pub topic: &'a str,
}

/// Figures carried by a heartbeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat<'a> {
    /// The worker's status as the API shows it (`RUNNING`, `ERROR`, ...).
    pub status: &'a str,
    pub processed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub in_flight: u64,
    pub host_pid: Option<i32>,
}

/// Publishes lifecycle and infra events. Never fails its caller: errors are logged.
#[derive(Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
    /// Cluster mode: this daemon's instance id, added to every event's data as `instance`
    /// (the bus is shared, so a reader needs to know which daemon speaks).
    instance: Option<String>,
}

impl Events {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Events {
            bus,
            instance: None,
        }
    }

    /// Names this daemon in every event's data (`"instance"`).
    pub fn with_instance(mut self, instance: String) -> Self {
        self.instance = Some(instance);
        self
    }

    /// A worker lifecycle event on `workmanager.lifecycle`.
    pub async fn worker(
        &self,
        kind: Lifecycle,
        w: WorkerRef<'_>,
        error: Option<(ErrorType, &str)>,
    ) {
        self.send(LIFECYCLE_TOPIC, lifecycle_event(kind, w, error))
            .await;
    }

    /// `lifecycle.dependencies.<step>` on `workmanager.lifecycle`: a step of a wheel's
    /// dependency install (`started`, `progress`, `finished`, `failed`; data built by
    /// `control::DepsEvent::data`).
    pub async fn dependencies(&self, step: &str, worker_id: &str, data: &Value) {
        let ev = base_event(
            format!("{LIFECYCLE_TYPE_PREFIX}dependencies.{step}"),
            format!("worker/{worker_id}"),
            data,
        );
        self.send(LIFECYCLE_TOPIC, ev).await;
    }

    /// `infra.host.crashed` on `workmanager.infra.host`. `culprit` is the worker and message
    /// id the crash slot named, if any.
    pub async fn host_crashed(
        &self,
        host_id: &str,
        pid: i32,
        signal: Option<i32>,
        culprit: Option<(&str, u64)>,
        reason: &str,
        syscall: Option<&str>,
    ) {
        let crash = HostCrash {
            host_id,
            pid,
            signal,
            culprit,
            reason,
            syscall,
        };
        self.send(INFRA_HOST_TOPIC, host_crashed_event(&crash))
            .await;
    }

    /// `infra.host.respawned` on `workmanager.infra.host`.
    pub async fn host_respawned(&self, host_id: &str, pid: i32, restarts: u32) {
        let data = json!({"host_id": host_id, "pid": pid, "restarts": restarts});
        let ev = infra_event("host.respawned", &format!("host/{host_id}"), &data);
        self.send(INFRA_HOST_TOPIC, ev).await;
    }

    /// `infra.worker.heartbeat` on `workmanager.infra.worker`.
    pub async fn heartbeat(&self, w: WorkerRef<'_>, hb: &Heartbeat<'_>) {
        let data = json!({
            "worker_id": w.id, "group": w.group, "topic": w.topic, "status": hb.status,
            "processed": hb.processed, "failed": hb.failed, "dead_lettered": hb.dead_lettered,
            "in_flight": hb.in_flight, "host_pid": hb.host_pid,
        });
        let ev = infra_event("worker.heartbeat", &format!("worker/{}", w.id), &data);
        self.send(INFRA_WORKER_TOPIC, ev).await;
    }

    /// `infra.grouplock.acquired` / `.released` on `workmanager.infra.grouplock`.
    pub async fn group_lock(&self, acquired: bool, group: &str, worker_id: &str) {
        let kind = if acquired {
            "grouplock.acquired"
        } else {
            "grouplock.released"
        };
        let data = json!({"group": group, "worker_id": worker_id});
        let ev = infra_event(kind, &format!("group/{group}"), &data);
        self.send(INFRA_GROUPLOCK_TOPIC, ev).await;
    }

    async fn send(&self, topic: &str, mut ev: CloudEvent) {
        if let Some(instance) = &self.instance {
            with_instance(&mut ev, instance);
        }
        let ty = ev.ty.clone();
        if let Err(e) = self.bus.publish(topic, vec![ev]).await {
            tracing::warn!(topic, event_type = ty, error = %e, "cannot publish a daemon event; it is lost");
        }
    }
}

/// Adds `"instance": <id>` to an event's JSON object data.
fn with_instance(ev: &mut CloudEvent, instance: &str) {
    let Some(Ok(Value::Object(mut data))) = ev.data.as_deref().map(serde_json::from_slice::<Value>)
    else {
        return;
    };
    data.insert("instance".into(), Value::String(instance.to_owned()));
    ev.data = Some(Value::Object(data).to_string().into_bytes());
}

/// Builds a lifecycle event (see the module docs for its shape).
pub fn lifecycle_event(
    kind: Lifecycle,
    w: WorkerRef<'_>,
    error: Option<(ErrorType, &str)>,
) -> CloudEvent {
    let data = json!({
        "worker_id": w.id,
        "group": w.group,
        "topic": w.topic,
        "error_type": error.map(|(t, _)| t.as_str()),
        "error_message": error.map(|(_, m)| m),
    });
    base_event(kind.event_type(), format!("worker/{}", w.id), &data)
}

/// What `infra.host.crashed` says about one host death.
#[derive(Debug, Clone, Copy)]
pub struct HostCrash<'a> {
    pub host_id: &'a str,
    pub pid: i32,
    pub signal: Option<i32>,
    /// The worker and message id the crash slot named, if any.
    pub culprit: Option<(&'a str, u64)>,
    /// The death report's cause, e.g. `worker 'w' called socket(2), which the sandbox forbids`.
    pub reason: &'a str,
    /// The syscall the sandbox refused, when that ended the host.
    pub syscall: Option<&'a str>,
}

/// Builds an `infra.host.crashed` event.
pub fn host_crashed_event(c: &HostCrash<'_>) -> CloudEvent {
    let data = json!({
        "host_id": c.host_id,
        "pid": c.pid,
        "signal": c.signal,
        "signal_name": c.signal.and_then(signal_name),
        "culprit_worker_id": c.culprit.map(|(w, _)| w),
        "culprit_message_id": c.culprit.map(|(_, m)| m),
        "reason": c.reason,
        "syscall": c.syscall,
    });
    infra_event("host.crashed", &format!("host/{}", c.host_id), &data)
}

fn infra_event(kind: &str, subject: &str, data: &Value) -> CloudEvent {
    base_event(
        format!("{INFRA_TYPE_PREFIX}{kind}"),
        subject.to_string(),
        data,
    )
}

fn base_event(ty: String, subject: String, data: &Value) -> CloudEvent {
    let mut ev = CloudEvent::new(uuid::Uuid::new_v4().to_string(), ty, SOURCE);
    ev.subject = Some(subject);
    ev.time = Some(rfc3339_now());
    ev.datacontenttype = Some("application/json".into());
    ev.data = Some(data.to_string().into_bytes());
    ev
}

/// The name of a Linux signal number, for crash reports.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

/// The current time as RFC 3339 UTC with microseconds, e.g. `2026-11-21T14:26:24.123456Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_micros())
}

/// Formats seconds since the Unix epoch (UTC) as RFC 3339.
pub fn rfc3339(secs: u64, micros: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            rfc3339(1_795_357_584, 123_456),
            "2026-11-22T14:26:24.123456Z"
        );
        assert_eq!(rfc3339(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn cluster_events_name_their_daemon() {
        let mut ev = lifecycle_event(
            Lifecycle::Online,
            WorkerRef {
                id: "w1",
                group: None,
                topic: "t",
            },
            None,
        );
        with_instance(&mut ev, "workmanager@host:42");
        let data: Value = serde_json::from_slice(ev.data.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(data["instance"], "workmanager@host:42");
        assert_eq!(data["worker_id"], "w1");
    }

    #[test]
    fn lifecycle_event_shape() {
        let w = WorkerRef {
            id: "w1",
            group: None,
            topic: "orders",
        };
        let ev = lifecycle_event(
            Lifecycle::Failed,
            w,
            Some((ErrorType::CrashLoop, "crashed 3 times")),
        );
        ev.validate().unwrap();
        assert_eq!(ev.ty, "com.virtufin.workmanager.lifecycle.failed");
        assert_eq!(ev.source, SOURCE);
        assert_eq!(ev.subject.as_deref(), Some("worker/w1"));
        assert!(uuid::Uuid::parse_str(&ev.id).is_ok());
        let data: Value = serde_json::from_slice(ev.data.as_deref().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"worker_id":"w1","group":null,"topic":"orders",
                   "error_type":"crash_loop","error_message":"crashed 3 times"})
        );
        let other = lifecycle_event(Lifecycle::Online, w, None);
        assert_ne!(other.id, ev.id);
        assert_eq!(
            serde_json::to_value(ErrorType::InvalidResponse).unwrap(),
            "invalid_response"
        );
    }

    #[test]
    fn host_crash_names_the_signal() {
        let ev = host_crashed_event(&HostCrash {
            host_id: "native-1",
            pid: 42,
            signal: Some(11),
            culprit: Some(("w1", 7)),
            reason: "host native-1 (pid 42) died of SIGSEGV",
            syscall: None,
        });
        let data: Value = serde_json::from_slice(ev.data.as_deref().unwrap()).unwrap();
        assert_eq!(data["signal_name"], "SIGSEGV");
        assert_eq!(data["culprit_message_id"], 7);
        assert_eq!(ev.ty, "com.virtufin.workmanager.infra.host.crashed");
        assert_eq!(ev.subject.as_deref(), Some("host/native-1"));
    }
}
