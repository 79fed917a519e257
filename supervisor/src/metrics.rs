//! The control plane's Prometheus counters and the `/metrics` text.
//!
//! Counters are plain atomics or a small map behind a std mutex (held for a map update only,
//! never across an `.await`). The runtime appends its own series through
//! [`crate::runtime::Runtime::render_metrics`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use wm_shared::sync::Locked as _;

use crate::registry::{Status, WorkerRecord};

/// Something else that appends Prometheus text to `/metrics` (the bus, for instance).
pub type MetricsSource = Box<dyn Fn(&mut String) + Send + Sync>;

/// Counters kept by the API and the control plane.
#[derive(Default)]
pub struct Metrics {
    /// Other parts' series, rendered after ours.
    sources: Mutex<Vec<MetricsSource>>,
    /// `(method, status)` -> requests.
    /// By method, then status: a request's method is looked up without allocating.
    http: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// `result` -> code downloads.
    code_fetches: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests refused by the control-plane guards, by error code.
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// Workers created since start.
    pub workers_created: AtomicU64,
    /// Workers deleted since start.
    pub workers_deleted: AtomicU64,
    /// Code reloads since start.
    pub code_reloads: AtomicU64,
    /// Workers restarted by recovery since start.
    pub recovered: AtomicU64,
    /// Workers recovery failed to restart since start.
    pub recovery_failures: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Adds a source of series for `/metrics`.
    pub fn add_source(&self, source: MetricsSource) {
        self.sources.locked().push(source);
    }

    /// Appends every added source's series.
    pub fn render_sources(&self, out: &mut String) {
        for s in self.sources.locked().iter() {
            s(out);
        }
    }

    /// Counts one answered request.
    pub fn http_request(&self, method: &str, status: u16) {
        let mut m = self.http.locked();
        match m.get_mut(method) {
            Some(by_status) => *by_status.entry(status).or_default() += 1,
            None => {
                m.insert(method.to_owned(), BTreeMap::from([(status, 1)]));
            }
        }
    }

    /// Counts one request refused by authentication, scopes, the browser guards or limits
    /// (`unauthorized`, `forbidden`, `host_not_allowed`, `origin_not_allowed`,
    /// `rate_limited`, ...).
    pub fn rejection(&self, code: &'static str) {
        let mut m = self.rejections.locked();
        *m.entry(code).or_default() += 1;
    }

    /// Counts one code download by outcome (`ok`, `blocked`, `failed`, `too_large`, `sha256_mismatch`).
    pub fn code_fetch(&self, result: &'static str) {
        let mut m = self.code_fetches.locked();
        *m.entry(result).or_default() += 1;
    }

    /// Renders the control plane's series; `workers` feeds the per-status gauge.
    pub fn render(&self, workers: &[WorkerRecord], out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP workmanager_http_requests_total REST requests answered, by method and status."
        );
        let _ = writeln!(out, "# TYPE workmanager_http_requests_total counter");
        for (method, by_status) in self.http.locked().iter() {
            for (status, n) in by_status {
                let _ = writeln!(
                    out,
                    "workmanager_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP workmanager_api_rejections_total Requests refused by authentication, scopes, browser guards or limits, by error code."
        );
        let _ = writeln!(out, "# TYPE workmanager_api_rejections_total counter");
        for (code, n) in self.rejections.locked().iter() {
            let _ = writeln!(
                out,
                "workmanager_api_rejections_total{{code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP workmanager_workers Workers in the registry, by status."
        );
        let _ = writeln!(out, "# TYPE workmanager_workers gauge");
        for status in [Status::Stopped, Status::Running, Status::Error] {
            let n = workers.iter().filter(|w| w.status == status).count();
            let _ = writeln!(
                out,
                "workmanager_workers{{status=\"{}\"}} {n}",
                status.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP workmanager_code_fetches_total Code downloads from URLs, by result."
        );
        let _ = writeln!(out, "# TYPE workmanager_code_fetches_total counter");
        for (result, n) in self.code_fetches.locked().iter() {
            let _ = writeln!(
                out,
                "workmanager_code_fetches_total{{result=\"{result}\"}} {n}"
            );
        }
        for (name, help, v) in [
            (
                "workmanager_workers_created_total",
                "Workers created since start.",
                &self.workers_created,
            ),
            (
                "workmanager_workers_deleted_total",
                "Workers deleted since start.",
                &self.workers_deleted,
            ),
            (
                "workmanager_code_reloads_total",
                "Hot code reloads since start.",
                &self.code_reloads,
            ),
            (
                "workmanager_recovered_workers_total",
                "Workers restarted by recovery since start.",
                &self.recovered,
            ),
            (
                "workmanager_recovery_failures_total",
                "Workers recovery could not restart since start.",
                &self.recovery_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
}
