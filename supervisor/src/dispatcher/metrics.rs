//! Per-worker message metrics, rendered in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use wm_shared::sync::Locked as _;

/// Latency buckets in seconds: 10 µs .. 30 s.
const BUCKETS: [f64; 14] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct WorkerCounters {
    topic: String,
    processed: u64,
    failed: u64,
    dead_lettered: u64,
    buckets: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

/// Counters the dispatcher keeps. A mutex per update is fine at these rates (one lock per
/// message, uncontended in the common case); the ring, not this, is the hot path.
#[derive(Debug, Default)]
pub struct DispatchMetrics {
    workers: Mutex<HashMap<String, WorkerCounters>>,
    lock_contention: Mutex<HashMap<String, u64>>,
}

/// Snapshot of one worker's counters (for `GET /v1/workers/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    pub processed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

impl DispatchMetrics {
    fn with(&self, worker: &str, topic: &str, f: impl FnOnce(&mut WorkerCounters)) {
        let mut map = self.workers.locked();
        // Looked up by `&str` first: no key allocated per message once the worker is known.
        if let Some(c) = map.get_mut(worker) {
            if c.topic.is_empty() {
                c.topic = topic.to_string();
            }
            f(c);
            return;
        }
        let c = map.entry(worker.to_string()).or_default();
        c.topic = topic.to_string();
        f(c);
    }

    pub fn processed(&self, worker: &str, topic: &str) {
        self.with(worker, topic, |c| c.processed += 1);
    }

    pub fn failed(&self, worker: &str, topic: &str) {
        self.with(worker, topic, |c| c.failed += 1);
    }

    pub fn dead_lettered(&self, worker: &str, topic: &str) {
        self.with(worker, topic, |c| c.dead_lettered += 1);
    }

    pub fn observe(&self, worker: &str, topic: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.with(worker, topic, |c| {
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    c.buckets[i] += 1;
                }
            }
            c.latency_count += 1;
            c.latency_sum += secs;
        });
    }

    pub fn lock_contended(&self, group: &str) {
        let mut map = self.lock_contention.locked();
        *map.entry(group.to_string()).or_default() += 1;
    }

    pub fn counts(&self, worker: &str) -> WorkerCounts {
        let map = self.workers.locked();
        map.get(worker)
            .map_or_else(WorkerCounts::default, |c| WorkerCounts {
                processed: c.processed,
                failed: c.failed,
                dead_lettered: c.dead_lettered,
            })
    }

    /// Appends the metrics in the Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let map = self.workers.locked().clone();
        let mut workers: Vec<_> = map.into_iter().collect();
        workers.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, help, get) in [
            (
                "workmanager_messages_processed_total",
                "Messages a worker handled successfully.",
                (|c: &WorkerCounters| c.processed) as fn(&WorkerCounters) -> u64,
            ),
            (
                "workmanager_messages_failed_total",
                "Failed attempts (each retry counts).",
                |c: &WorkerCounters| c.failed,
            ),
            (
                "workmanager_messages_dead_lettered_total",
                "Messages sent to <topic>-dead.",
                |c: &WorkerCounters| c.dead_lettered,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (w, c) in &workers {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{w}\",topic=\"{}\"}} {}",
                    c.topic,
                    get(c)
                );
            }
        }
        let h = "workmanager_message_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {h} Time from sending a message to its host to the result.\n# TYPE {h} histogram"
        );
        for (w, c) in &workers {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{h}_bucket{{worker=\"{w}\",topic=\"{}\",le=\"{b}\"}} {}",
                    c.topic, c.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "{h}_bucket{{worker=\"{w}\",topic=\"{}\",le=\"+Inf\"}} {}",
                c.topic, c.latency_count
            );
            let _ = writeln!(
                out,
                "{h}_sum{{worker=\"{w}\",topic=\"{}\"}} {}",
                c.topic, c.latency_sum
            );
            let _ = writeln!(
                out,
                "{h}_count{{worker=\"{w}\",topic=\"{}\"}} {}",
                c.topic, c.latency_count
            );
        }
        let l = "workmanager_lock_contention_events_total";
        let _ = writeln!(
            out,
            "# HELP {l} Group lock acquisitions that had to wait.\n# TYPE {l} counter"
        );
        let locks = self.lock_contention.locked().clone();
        let mut locks: Vec<_> = locks.into_iter().collect();
        locks.sort();
        for (g, n) in locks {
            let _ = writeln!(out, "{l}{{group=\"{g}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = DispatchMetrics::default();
        m.processed("w1", "t");
        m.processed("w1", "t");
        m.failed("w1", "t");
        m.observe("w1", "t", Duration::from_micros(30));
        m.lock_contended("g");
        assert_eq!(
            m.counts("w1"),
            WorkerCounts {
                processed: 2,
                failed: 1,
                dead_lettered: 0
            }
        );
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(out.contains("workmanager_messages_processed_total{worker=\"w1\",topic=\"t\"} 2"));
        assert!(out.contains("workmanager_message_duration_seconds_bucket{worker=\"w1\",topic=\"t\",le=\"0.00005\"} 1"));
        assert!(out.contains("workmanager_message_duration_seconds_bucket{worker=\"w1\",topic=\"t\",le=\"0.00001\"} 0"));
        assert!(out.contains("workmanager_lock_contention_events_total{group=\"g\"} 1"));
    }
}
