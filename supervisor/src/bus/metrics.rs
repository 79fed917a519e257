//! Bus counters, rendered in the Prometheus text format by whoever serves `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use wm_shared::sync::Locked as _;

/// Per-topic counters.
#[derive(Debug, Default, Clone, Copy)]
struct TopicCounts {
    published: u64,
    dropped: u64,
    overflowed: u64,
    evicted: u64,
}

/// Counters of one bus. Updated by the bus writer once per batch, read by `/metrics`.
#[derive(Debug, Default)]
pub struct BusMetrics {
    /// Per topic; a mutex because topics appear at run time (the writer takes it once per batch).
    topics: Mutex<BTreeMap<String, TopicCounts>>,
    settled_replied: AtomicU64,
    settled_dead_lettered: AtomicU64,
    settled_dropped: AtomicU64,
    redelivered: AtomicU64,
    commits: AtomicU64,
    /// Publishes, settles and completions applied on the caller's thread (writer idle).
    inline_writes: AtomicU64,
    /// Publishes, settles and completions that joined an open group commit's window.
    joined_writes: AtomicU64,
    /// Events in the store that have not reached their outcome.
    stored: AtomicI64,
    /// Events waiting for the writer to commit them.
    queued: AtomicI64,
}

impl BusMetrics {
    pub(crate) fn add_published(&self, topic: &str, n: u64) {
        self.with_topic(topic, |c| c.published += n);
    }

    /// Counts `n` events of `topic` dropped for want of a consumer (the outcome first: a reader
    /// who sees the per-topic count also sees the outcome count).
    pub(crate) fn add_dropped(&self, topic: &str, n: u64) {
        self.settled_dropped.fetch_add(n, Ordering::Relaxed);
        self.with_topic(topic, |c| c.dropped += n);
    }

    /// Counts `n` events published on `topic` beyond its backlog limit (they went to
    /// `<topic>-dead` with reason `overflow`).
    pub(crate) fn add_overflowed(&self, topic: &str, n: u64) {
        self.with_topic(topic, |c| c.overflowed += n);
    }

    /// Counts `n` dead letters of `topic` evicted because it held more than its limit.
    pub(crate) fn add_evicted(&self, topic: &str, n: u64) {
        self.with_topic(topic, |c| c.evicted += n);
    }

    /// Dead letters of `topic` evicted (oldest first) beyond `DEAD_LETTER_MAX_EVENTS`.
    pub fn evicted(&self, topic: &str) -> u64 {
        self.topic_counts(topic).evicted
    }

    fn with_topic(&self, topic: &str, f: impl FnOnce(&mut TopicCounts)) {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        let mut map = self.topics.locked();
        match map.get_mut(topic) {
            Some(c) => f(c),
            None => {
                let mut c = TopicCounts::default();
                f(&mut c);
                map.insert(topic.to_string(), c);
            }
        }
    }

    pub(crate) fn add_settled(&self, label: &str) {
        let counter = match label {
            "replied" => &self.settled_replied,
            "dead_lettered" => &self.settled_dead_lettered,
            _ => &self.settled_dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_redelivered(&self, n: u64) {
        self.redelivered.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_inline_write(&self) {
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_joined(&self, n: u64) {
        self.joined_writes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_stored(&self, delta: i64) {
        self.stored.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn set_stored(&self, n: i64) {
        self.stored.store(n, Ordering::Relaxed);
    }

    pub(crate) fn add_queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Ordering::Relaxed);
    }

    /// Events published on `topic` so far.
    pub fn published(&self, topic: &str) -> u64 {
        self.topic_counts(topic).published
    }

    /// Events on `topic` dropped because no worker consumed the topic.
    pub fn dropped(&self, topic: &str) -> u64 {
        self.topic_counts(topic).dropped
    }

    /// Events published on `topic` beyond its backlog limit, dead-lettered as `overflow`.
    pub fn overflowed(&self, topic: &str) -> u64 {
        self.topic_counts(topic).overflowed
    }

    fn topic_counts(&self, topic: &str) -> TopicCounts {
        let map = self.topics.locked();
        map.get(topic).copied().unwrap_or_default()
    }

    /// Events settled with outcome `label` (`replied`, `dead_lettered`, `dropped`).
    pub fn settled(&self, label: &str) -> u64 {
        match label {
            "replied" => self.settled_replied.load(Ordering::Relaxed),
            "dead_lettered" => self.settled_dead_lettered.load(Ordering::Relaxed),
            "dropped" => self.settled_dropped.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Events in the store that have not reached their outcome.
    pub fn stored(&self) -> i64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Events accepted by `publish` and not yet committed.
    pub fn queued(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Transactions committed by the writer (publishes per commit = the group-commit factor).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Publishes, settles and completions committed on the caller's thread because the
    /// writer was idle (`BUS_INLINE_COMMIT`), not by the writer thread.
    pub fn inline_writes(&self) -> u64 {
        self.inline_writes.load(Ordering::Relaxed)
    }

    /// Publishes, settles and completions applied in the join window of a group commit that
    /// handed its events out early (`BUS_JOIN_WINDOW_US`): each saved a commit of its own.
    pub fn joined_writes(&self) -> u64 {
        self.joined_writes.load(Ordering::Relaxed)
    }

    /// Appends every bus metric in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let topics: Vec<(String, TopicCounts)> = {
            let map = self.topics.locked();
            map.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        header(
            out,
            "workmanager_bus_published_total",
            "counter",
            "Events committed to the bus store, per topic.",
        );
        for (t, c) in &topics {
            let _ = writeln!(
                out,
                "workmanager_bus_published_total{{topic=\"{}\"}} {}",
                escape(t),
                c.published
            );
        }
        header(
            out,
            "workmanager_bus_dropped_total",
            "counter",
            "Events dropped because no worker consumed their topic, per topic.",
        );
        for (t, c) in &topics {
            let _ = writeln!(
                out,
                "workmanager_bus_dropped_total{{topic=\"{}\"}} {}",
                escape(t),
                c.dropped
            );
        }
        header(
            out,
            "workmanager_bus_overflowed_total",
            "counter",
            "Events published beyond a topic's backlog limit, sent to <topic>-dead (overflow).",
        );
        for (t, c) in &topics {
            let _ = writeln!(
                out,
                "workmanager_bus_overflowed_total{{topic=\"{}\"}} {}",
                escape(t),
                c.overflowed
            );
        }
        header(
            out,
            "workmanager_bus_dead_letters_evicted_total",
            "counter",
            "Dead letters evicted, oldest first, from a dead-letter topic over DEAD_LETTER_MAX_EVENTS, per topic.",
        );
        for (t, c) in topics.iter().filter(|(_, c)| c.evicted > 0) {
            let _ = writeln!(
                out,
                "workmanager_bus_dead_letters_evicted_total{{topic=\"{}\"}} {}",
                escape(t),
                c.evicted
            );
        }
        header(
            out,
            "workmanager_bus_settled_total",
            "counter",
            "Events that reached their outcome and left the store, per outcome.",
        );
        for label in ["replied", "dead_lettered", "dropped"] {
            let _ = writeln!(
                out,
                "workmanager_bus_settled_total{{outcome=\"{label}\"}} {}",
                self.settled(label)
            );
        }
        header(
            out,
            "workmanager_bus_redelivered_total",
            "counter",
            "Deliveries of events that had been handed out before (after a crash or an unsubscribe).",
        );
        let _ = writeln!(
            out,
            "workmanager_bus_redelivered_total {}",
            self.redelivered.load(Ordering::Relaxed)
        );
        header(
            out,
            "workmanager_bus_commits_total",
            "counter",
            "Transactions committed by the bus writer.",
        );
        let _ = writeln!(out, "workmanager_bus_commits_total {}", self.commits());
        header(
            out,
            "workmanager_bus_inline_writes_total",
            "counter",
            "Publishes, settles and completions committed on the calling thread because the bus writer was idle (BUS_INLINE_COMMIT).",
        );
        let _ = writeln!(
            out,
            "workmanager_bus_inline_writes_total {}",
            self.inline_writes()
        );
        header(
            out,
            "workmanager_bus_joined_writes_total",
            "counter",
            "Publishes, settles and completions that joined the open transaction of a group commit whose events went to their workers before its fsync (BUS_JOIN_WINDOW_US).",
        );
        let _ = writeln!(
            out,
            "workmanager_bus_joined_writes_total {}",
            self.joined_writes()
        );
        header(
            out,
            "workmanager_bus_store_queue_depth",
            "gauge",
            "Published events waiting for the bus writer to commit them.",
        );
        let _ = writeln!(out, "workmanager_bus_store_queue_depth {}", self.queued());
        header(
            out,
            "workmanager_bus_stored_events",
            "gauge",
            "Events in the bus store that have not reached their outcome.",
        );
        let _ = writeln!(out, "workmanager_bus_stored_events {}", self.stored());
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value (topic names are restricted already; this keeps it safe).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = BusMetrics::default();
        m.add_published("orders", 3);
        m.add_dropped("orders", 2);
        m.add_settled("replied");
        m.add_stored(1);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(out.contains("workmanager_bus_published_total{topic=\"orders\"} 3\n"));
        assert!(out.contains("workmanager_bus_dropped_total{topic=\"orders\"} 2\n"));
        assert!(out.contains("workmanager_bus_settled_total{outcome=\"replied\"} 1\n"));
        assert!(out.contains("workmanager_bus_settled_total{outcome=\"dropped\"} 2\n"));
        assert!(out.contains("workmanager_bus_stored_events 1\n"));
        assert!(out.contains("# TYPE workmanager_bus_store_queue_depth gauge\n"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
