//! The per-host series of `/metrics` (restarts, crashes, RSS, calls in flight).

use crate::runtime::HostInfo;

/// Appends per-host metrics (restarts, crashes, RSS, in-flight) in the Prometheus format.
pub fn render_prometheus(hosts: &[HostInfo], out: &mut String) {
    use std::fmt::Write as _;
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&HostInfo) -> u64,
    );
    let series: [Series; 5] = [
        (
            "workmanager_host_restarts_total",
            "counter",
            "Respawns of a host slot.",
            |h| u64::from(h.restarts),
        ),
        (
            "workmanager_host_crashes_total",
            "counter",
            "Host deaths other than orderly shutdowns.",
            |h| h.crashes,
        ),
        (
            "workmanager_host_rss_bytes",
            "gauge",
            "Resident set size of the host process.",
            |h| h.rss_bytes,
        ),
        (
            "workmanager_host_in_flight",
            "gauge",
            "Calls running on the host.",
            |h| h.in_flight,
        ),
        (
            "workmanager_host_identity_violations_total",
            "counter",
            "Frames in which the host spoke for a worker it does not carry, or answered a call not in flight.",
            |h| h.identity_violations,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for h in hosts {
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",engine=\"{}\",isolation=\"{}\"}} {}",
                h.id,
                h.engine.mime(),
                h.isolation.as_str(),
                get(h)
            );
        }
    }
}
