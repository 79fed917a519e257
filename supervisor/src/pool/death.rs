//! What a host's death means: the report the slot publishes after reaping it, the verdict for
//! each call that was in flight, and whom its crash slots (host memory, so forgeable) may blame.

use std::collections::HashMap;

use wm_shared::ring::CrashRecord;

use super::{ExitStatus, SpawnConfig, signal_name};

/// Why a host died, as far as the supervisor can tell. Built after the process was reaped.
#[derive(Debug, Clone)]
pub struct DeathReport {
    pub host_id: String,
    pub pid: i32,
    pub status: ExitStatus,
    /// What the host's crash handler recorded (copied out of shared memory and validated).
    pub crash: Option<CrashRecord>,
    /// Set when the supervisor killed the host to reclaim a hung call: (worker, message).
    pub reclaimed: Option<(String, u64)>,
    /// Set when the supervisor cut the host off for breaking the protocol (a corrupt ring, an
    /// undecodable frame, a reply of the wrong kind): what it did.
    pub violation: Option<String>,
    /// Calls in flight when it died: message id -> worker id.
    pub in_flight: HashMap<u64, String>,
}

/// What a death means for one message that was in flight on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its call was on the faulting thread: charge an attempt.
    Culprit,
    /// Another call brought the host down: requeue without charge.
    Bystander,
    /// Nobody recorded anything (SIGKILL from outside, OOM killer): charge an attempt.
    Unattributed,
}

impl DeathReport {
    pub fn verdict(&self, msg_id: u64) -> Verdict {
        if let Some((_, culprit)) = &self.reclaimed {
            return if *culprit == msg_id {
                Verdict::Culprit
            } else {
                Verdict::Bystander
            };
        }
        match &self.crash {
            Some(rec) if rec.msg_id == msg_id => Verdict::Culprit,
            Some(_) => Verdict::Bystander,
            None => Verdict::Unattributed,
        }
    }

    /// The syscall the sandbox refused, when that is what ended the host.
    pub fn forbidden_syscall(&self) -> Option<String> {
        self.crash.as_ref().and_then(|c| c.forbidden_syscall_name())
    }

    /// What ended the host, for error messages, dead letters and `host.crashed`: the forbidden
    /// syscall and the worker whose call made it, the protocol violation, or the signal name
    /// or exit code.
    pub fn cause(&self) -> String {
        if let (Some(name), Some(rec)) = (self.forbidden_syscall(), self.crash.as_ref()) {
            return if rec.worker_id.is_empty() {
                format!(
                    "a plugin on host {} (pid {}) called {name}(2), which the sandbox forbids; the host was ended",
                    self.host_id, self.pid
                )
            } else {
                format!(
                    "worker '{}' called {name}(2), which the sandbox forbids; its host {} (pid {}) was ended",
                    rec.worker_id, self.host_id, self.pid
                )
            };
        }
        if let Some(what) = &self.violation {
            return format!(
                "host {} (pid {}) broke the host protocol and was ended: {what}",
                self.host_id, self.pid
            );
        }
        let sig = self.crash.as_ref().map(|c| c.signal).or(match self.status {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Exited(_) => None,
        });
        match (sig, &self.status) {
            (Some(s), _) => format!(
                "host {} (pid {}) died of {}",
                self.host_id,
                self.pid,
                signal_name(s)
            ),
            (None, st) => format!("host {} (pid {}) ended: {st}", self.host_id, self.pid),
        }
    }

    /// True when the death is pinned on one call: the crash handler recorded the worker and
    /// message on the faulting thread, or the supervisor killed the host to reclaim a hung call.
    pub fn has_culprit(&self) -> bool {
        self.reclaimed.is_some()
            || self
                .crash
                .as_ref()
                .is_some_and(|c| c.msg_id != 0 && !c.worker_id.is_empty())
    }

    /// The workers charged with this death for crash-loop counting.
    pub(super) fn charged_workers(&self) -> Vec<String> {
        if self.reclaimed.is_some() {
            return Vec::new();
        }
        match &self.crash {
            Some(rec) if !rec.worker_id.is_empty() => vec![rec.worker_id.clone()],
            _ => {
                let mut w: Vec<String> = self.in_flight.values().cloned().collect();
                w.sort();
                w.dedup();
                w
            }
        }
    }
}

/// Who a dead host's crash slots may blame. The slots are host memory, so a plugin can write
/// them: a record counts only if its worker is placed on this host and its message was in
/// flight there (or, with message 0, no call was in flight: a crash while loading). A record
/// that fails that is forged: it is ignored and named as a protocol violation. With no
/// usable record, a host killed by a signal while exactly one call was in flight is blamed on
/// that call (a plugin that blocked the crash handler's signal or removed its alternate stack
/// still pays for its own crash).
pub(super) fn attribute(
    records: &[CrashRecord],
    in_flight: &HashMap<u64, String>,
    placed: &[String],
    status: &ExitStatus,
) -> (Option<CrashRecord>, Option<String>) {
    let mut forged = None;
    for r in records {
        let on_host = placed.contains(&r.worker_id);
        let running = if r.msg_id == 0 {
            in_flight.is_empty()
        } else {
            in_flight.get(&r.msg_id) == Some(&r.worker_id)
        };
        if r.worker_id.is_empty() || (on_host && running) {
            return (Some(r.clone()), None);
        }
        forged.get_or_insert_with(|| {
            format!(
                "its crash slot names worker '{}' and message {}, which were not running on it (a forged crash report; ignored)",
                r.worker_id, r.msg_id
            )
        });
    }
    // Only a fault the host raised itself; not a kill (the supervisor's own, for a violation
    // or a reclaim, or anyone else's), and not when a forged record was found.
    let fault = matches!(
        status,
        ExitStatus::Signaled(s) if [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS, libc::SIGABRT].contains(s)
    );
    if let (true, ExitStatus::Signaled(sig), 1, None) = (fault, status, in_flight.len(), &forged)
        && let Some((msg_id, worker)) = in_flight.iter().next()
    {
        return (
            Some(CrashRecord {
                signal: *sig,
                tid: 0,
                worker_id: worker.clone(),
                msg_id: *msg_id,
                fault_addr: 0,
            }),
            forged,
        );
    }
    (None, forged)
}

/// A ring header the host rewrote (sizes, versions, the supervisor's closed flag): the
/// supervisor never reads those fields back for its own use, so this is only for naming why a
/// host ended.
pub(super) fn header_violation(
    region: &wm_shared::ring::Region,
    spawn: &SpawnConfig,
) -> Option<String> {
    let got = region.header_snapshot();
    let want = spawn.ring;
    if got.ring_bytes != want.ring_bytes as u64 || got.max_frame != want.max_frame as u64 {
        return Some(format!(
            "it rewrote the ring header (ring_bytes {} / max_frame {}, written as {} / {})",
            got.ring_bytes, got.max_frame, want.ring_bytes, want.max_frame
        ));
    }
    let want_lanes = if want.lanes == 0 {
        (0, 0)
    } else {
        (want.lanes as u32, want.lane_bytes as u32)
    };
    if (got.lanes, got.lane_bytes) != want_lanes {
        return Some(format!(
            "it rewrote the ring header's lanes ({} of {} bytes, written as {} of {})",
            got.lanes, got.lane_bytes, want_lanes.0, want_lanes.1
        ));
    }
    if got.magic_ok && got.supervisor_closed {
        return Some("it set the supervisor's closed flag in the ring header".to_string());
    }
    if !got.magic_ok {
        return Some("it overwrote the ring header's magic and versions".to_string());
    }
    if !got.indices_ok {
        return Some("it scribbled the ring indices (reader and writer disagree)".to_string());
    }
    None
}
