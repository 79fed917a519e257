//! What the pool checks in everything a host says unasked: who it speaks for, how often, how
//! much (issue 10, "Host input limits" in docs/security.md).
//!
//! - **Identity.** A `GatewayCall` or `Log` frame must name a worker placed on the host that
//!   sent it; a `ProcessResult` must answer a call in flight on that host, in the name of the
//!   worker called. Anything else is refused, counted per host slot
//!   (`workmanager_host_identity_violations_total`) and flags the host in `/v1/hosts`.
//! - **Rates.** Log lines and gateway calls are limited per worker (token buckets from the
//!   `governor` crate); what is over the rate is dropped (a log line) or answered with an error
//!   (a gateway call: the plugin waits for its reply), counted per worker, and summarised in
//!   the daemon log at most once a second.
//! - **Sizes.** [`max_event_bytes`]: the largest event a `Process` frame can carry.
//!
//! **Invariant:** nothing here blocks or allocates in proportion to what a host sends: the
//! limiters are keyed by placed workers only, and every counter is a fixed-size atomic.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use wm_shared::protocol::{Log, Message, Process};

/// The limits on what a host may send, from the settings.
#[derive(Debug, Clone)]
pub struct HostLimits {
    /// `WORKER_LOG_LINES_PER_SECOND`: log callbacks per worker per second (also the burst).
    pub log_lines_per_second: u32,
    /// `WORKER_GATEWAY_CALLS_PER_SECOND`: gateway calls per worker per second (also the burst).
    pub gateway_calls_per_second: u32,
    /// `HOST_GATEWAY_CALLS_IN_FLIGHT`: gateway calls of one host being served at once; over
    /// it the pool stops reading that host's frames until one finishes.
    pub gateway_in_flight_per_host: usize,
    /// `HOST_POOL_MAX_HOSTS`: host processes (slots) at once.
    pub max_hosts: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            log_lines_per_second: 200,
            gateway_calls_per_second: 1000,
            gateway_in_flight_per_host: 64,
            max_hosts: 64,
        }
    }
}

/// Per-worker rate limiting and the counters behind the host-input metrics.
pub struct Guard {
    logs: DefaultKeyedRateLimiter<String>,
    calls: DefaultKeyedRateLimiter<String>,
    drops: Mutex<HashMap<String, WorkerDrops>>,
    log_summary: Throttled,
    call_summary: Throttled,
    violation_summary: Throttled,
}

/// What was refused for one worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerDrops {
    /// Log lines over `WORKER_LOG_LINES_PER_SECOND`, dropped.
    pub log_lines: u64,
    /// Gateway calls over `WORKER_GATEWAY_CALLS_PER_SECOND`, answered with an error.
    pub gateway_calls: u64,
}

/// The kind of thing a host says unasked and the guard rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rated {
    LogLine,
    GatewayCall,
}

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl Guard {
    pub fn new(limits: &HostLimits) -> Guard {
        Guard {
            logs: RateLimiter::keyed(per_second(limits.log_lines_per_second)),
            calls: RateLimiter::keyed(per_second(limits.gateway_calls_per_second)),
            drops: Mutex::new(HashMap::new()),
            log_summary: Throttled::new(),
            call_summary: Throttled::new(),
            violation_summary: Throttled::new(),
        }
    }

    /// Whether `worker` may send one more `what` now. A refusal is counted and summarised in
    /// the log at most once a second. Call only for workers placed on the sending host (the
    /// limiters keep a small state per key).
    pub fn allow(&self, worker: &str, what: Rated) -> bool {
        let key = worker.to_string();
        let limiter = match what {
            Rated::LogLine => &self.logs,
            Rated::GatewayCall => &self.calls,
        };
        if limiter.check_key(&key).is_ok() {
            return true;
        }
        {
            let mut drops = lock(&self.drops);
            let d = drops.entry(key).or_default();
            match what {
                Rated::LogLine => d.log_lines += 1,
                Rated::GatewayCall => d.gateway_calls += 1,
            }
        }
        match what {
            Rated::LogLine => {
                if let Some(n) = self.log_summary.note() {
                    tracing::warn!(
                        worker,
                        dropped = n,
                        "log lines over WORKER_LOG_LINES_PER_SECOND dropped"
                    );
                }
            }
            Rated::GatewayCall => {
                if let Some(n) = self.call_summary.note() {
                    tracing::warn!(
                        worker,
                        refused = n,
                        "gateway calls over WORKER_GATEWAY_CALLS_PER_SECOND refused"
                    );
                }
            }
        }
        false
    }

    /// Logs an identity violation (at most once a second, with how many since the last line).
    pub fn violation(&self, host: &str, pid: i32, what: &str) {
        if let Some(n) = self.violation_summary.note() {
            tracing::warn!(
                host,
                pid,
                violations = n,
                "host spoke for a worker it does not carry: {what}; refused"
            );
        }
    }

    /// Forgets a worker's limiter state (it left its host); its counters stay for `/metrics`.
    pub fn forget(&self, _worker: &str) {
        self.logs.retain_recent();
        self.calls.retain_recent();
    }

    /// Refusals per worker, sorted by worker id.
    pub fn drops(&self) -> Vec<(String, WorkerDrops)> {
        let mut v: Vec<(String, WorkerDrops)> = lock(&self.drops)
            .iter()
            .map(|(k, d)| (k.clone(), *d))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Appends the per-worker refusal counters in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let drops = self.drops();
        for (name, help, get) in [
            (
                "workmanager_worker_log_lines_dropped_total",
                "Log lines of a worker dropped over WORKER_LOG_LINES_PER_SECOND.",
                (|d: &WorkerDrops| d.log_lines) as fn(&WorkerDrops) -> u64,
            ),
            (
                "workmanager_worker_gateway_calls_refused_total",
                "Gateway calls of a worker refused over WORKER_GATEWAY_CALLS_PER_SECOND.",
                |d: &WorkerDrops| d.gateway_calls,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (worker, d) in &drops {
                let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {}", get(d));
            }
        }
        let (lines, truncated) = super::stderr::counters();
        let _ = writeln!(
            out,
            "# HELP workmanager_host_stderr_lines_dropped_total Host stderr lines dropped over HOST_STDERR_LINES_PER_SECOND.\n# TYPE workmanager_host_stderr_lines_dropped_total counter\nworkmanager_host_stderr_lines_dropped_total {lines}"
        );
        let _ = writeln!(
            out,
            "# HELP workmanager_host_stderr_lines_truncated_total Host stderr lines cut at HOST_STDERR_LINE_MAX_BYTES.\n# TYPE workmanager_host_stderr_lines_truncated_total counter\nworkmanager_host_stderr_lines_truncated_total {truncated}"
        );
    }
}

/// Writes an accepted log line of a plugin into the daemon's log at its level.
pub fn emit_log(host: &str, log: &Log) {
    let w = log.worker_id.as_str();
    let m = log.message.as_str();
    let id = log.msg_id;
    match log.level {
        i32::MIN..=0 => tracing::trace!(worker = w, host, msg_id = id, "Native worker: {m}"),
        1 => tracing::debug!(worker = w, host, msg_id = id, "Native worker: {m}"),
        2 => tracing::info!(worker = w, host, msg_id = id, "Native worker: {m}"),
        3 => tracing::warn!(worker = w, host, msg_id = id, "Native worker: {m}"),
        _ => tracing::error!(worker = w, host, msg_id = id, "Native worker: {m}"),
    }
}

/// Bytes of a `Process` frame besides the event: ids, the worker id (at most 255 bytes; ours
/// are UUIDs) and FlatBuffer overhead (vtable, offsets, vector length and padding).
pub fn process_frame_overhead() -> usize {
    let empty = Message::Process(Process {
        msg_id: u64::MAX,
        worker_id: "w".repeat(255),
        event: Vec::new(),
    })
    .encode();
    // The event vector's length prefix and alignment padding come on top of the empty frame.
    empty.len() + 16
}

/// The largest encoded event (`worker_api.fbs` FlatBuffer) a ring with frames of at most
/// `max_frame` bytes (`RING_MAX_FRAME_BYTES`) can carry to a worker.
pub fn max_event_bytes(max_frame: u64) -> usize {
    usize::try_from(max_frame)
        .unwrap_or(usize::MAX)
        .saturating_sub(process_frame_overhead())
}

/// Counts events and says, at most once per second, how many happened since it last said so.
pub struct Throttled {
    pending: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Throttled {
    pub fn new() -> Throttled {
        Throttled {
            pending: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one; `Some(n)` when it is time to report the `n` counted since the last report.
    pub fn note(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.last);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttled {
    fn default() -> Self {
        Throttled::new()
    }
}

use crate::sync::lock;

/// A handle the pool gives each host generation: the slot's violation counter.
#[derive(Debug, Default)]
pub struct Violations(AtomicU64);

impl Violations {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Shared form of [`Violations`].
pub type SharedViolations = Arc<Violations>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_over_its_rate_is_refused_and_counted_alone() {
        let g = Guard::new(&HostLimits {
            log_lines_per_second: 5,
            gateway_calls_per_second: 2,
            ..HostLimits::default()
        });
        let allowed = (0..20).filter(|_| g.allow("a", Rated::LogLine)).count();
        assert_eq!(allowed, 5, "the burst is the per-second rate");
        assert!(
            g.allow("b", Rated::LogLine),
            "another worker has its own bucket"
        );
        assert!(g.allow("a", Rated::GatewayCall));
        assert!(g.allow("a", Rated::GatewayCall));
        assert!(!g.allow("a", Rated::GatewayCall));
        let drops = g.drops();
        assert_eq!(
            drops,
            vec![(
                "a".to_string(),
                WorkerDrops {
                    log_lines: 15,
                    gateway_calls: 1
                }
            )]
        );
        let mut text = String::new();
        g.render_prometheus(&mut text);
        assert!(text.contains("workmanager_worker_log_lines_dropped_total{worker=\"a\"} 15"));
        assert!(text.contains("workmanager_worker_gateway_calls_refused_total{worker=\"a\"} 1"));
    }

    #[test]
    fn summaries_come_at_most_once_a_second() {
        let t = Throttled::new();
        assert_eq!(t.note(), Some(1));
        assert_eq!(t.note(), None);
        assert_eq!(t.note(), None);
        *lock(&t.last) = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.note(), Some(3));
    }

    #[test]
    fn the_event_limit_leaves_room_for_the_frame() {
        let max = 262_144u64;
        let limit = max_event_bytes(max);
        let frame = Message::Process(Process {
            msg_id: u64::MAX,
            worker_id: "w".repeat(255),
            event: vec![7; limit],
        })
        .encode();
        assert!(frame.len() as u64 <= max, "{} > {max}", frame.len());
        assert!(limit > 260_000);
    }
}
