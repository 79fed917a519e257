//! One live generation of a host process as callers see it: calls with their deadlines, the
//! calls in flight (for attributing a death), reclaiming a hung call, and what a call came to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use wm_shared::protocol::link::{HostLink, LinkError};
use wm_shared::protocol::{EngineKind, GatewayReply, Message, Process, ProcessResult};

use super::death::DeathReport;
use super::guard::Violations;
use super::{ExitStatus, layers, lock};

/// What a call on a host came to.
#[derive(Debug)]
pub enum CallOutcome {
    Done(ProcessResult),
    /// The deadline passed; the call is still running on the host.
    TimedOut,
    HostDied(Arc<DeathReport>),
    /// The call never reached the host: its ring stayed full for `SEND_TIMEOUT`, or the frame
    /// is over `RING_MAX_FRAME_BYTES` (`too_large`: sending it again can never work). The host
    /// is alive; this is a failure of this one message, not a death.
    SendFailed {
        reason: String,
        too_large: bool,
    },
    /// The host answered in the name of another worker than the one called (an identity
    /// violation, counted for the host): the answer is refused.
    Forged(String),
}

/// One live generation of a host process.
#[derive(Debug)]
pub struct HostHandle {
    pub host_id: String,
    pub pid: i32,
    pub engine: EngineKind,
    pub link: HostLink,
    /// The sandbox layers this process runs under.
    pub layers: layers::HostLayers,
    pub(super) in_flight: Mutex<HashMap<u64, String>>,
    pub(super) death: watch::Receiver<Option<Arc<DeathReport>>>,
    pub(super) reclaim: Mutex<Option<(String, u64)>>,
    /// The protocol violation the host was cut off for, if any.
    pub(super) violation: Mutex<Option<String>>,
    pub(super) kill: tokio::sync::Notify,
    /// The slot's count of identity violations (survives respawns).
    pub(super) violations: Arc<Violations>,
    /// Places for gateway calls being served (`HOST_GATEWAY_CALLS_IN_FLIGHT`).
    pub(super) gateway_slots: Arc<Semaphore>,
    /// The host's private temp folder (where it leaves compiled C# source), if it has one.
    pub(super) tmp_dir: Option<std::path::PathBuf>,
}

impl HostHandle {
    /// Sends one Process frame and waits for its result, the deadline, or the host's death.
    pub async fn call(
        &self,
        worker_id: &str,
        msg_id: u64,
        event: Vec<u8>,
        timeout: Duration,
    ) -> CallOutcome {
        lock(&self.in_flight).insert(msg_id, worker_id.to_string());
        let req = self.link.request(Message::Process(Process {
            msg_id,
            worker_id: worker_id.to_string(),
            event,
        }));
        match tokio::time::timeout(timeout, req).await {
            Ok(Ok(Message::ProcessResult(r))) => {
                lock(&self.in_flight).remove(&msg_id);
                if r.worker_id != worker_id {
                    self.violations.add();
                    let why = format!(
                        "host {} answered message {msg_id} of worker '{worker_id}' in the name of worker '{}'",
                        self.host_id,
                        truncated(&r.worker_id)
                    );
                    tracing::warn!(host = %self.host_id, pid = self.pid, "{why}; refused");
                    return CallOutcome::Forged(why);
                }
                CallOutcome::Done(r)
            }
            Ok(Ok(other)) => {
                // A host answering with the wrong kind is broken: treat it as dead.
                tracing::error!(host = %self.host_id, "host answered Process with {other:?}; killing it");
                self.cut_off(format!("it answered a Process frame with {}", other.kind()));
                CallOutcome::HostDied(self.died().await)
            }
            Ok(Err(e)) => self.call_failed(msg_id, e).await,
            Err(_) => CallOutcome::TimedOut,
        }
    }

    /// Maps a link error of a `Process` call: only a gone or cut-off host means a death (and
    /// only then is the death report awaited); a send that failed leaves the host alive.
    async fn call_failed(&self, msg_id: u64, e: LinkError) -> CallOutcome {
        match send_failure(&e) {
            Some(outcome) => {
                lock(&self.in_flight).remove(&msg_id);
                if let LinkError::Send { .. } = e {
                    // Its ring stayed full for SEND_TIMEOUT: the host does not read. It is
                    // killed (and respawned) rather than left to fail every later call.
                    tracing::error!(host = %self.host_id, pid = self.pid, msg_id, error = %e,
                        "the host does not read its ring; killing it");
                    self.kill.notify_one();
                } else {
                    tracing::warn!(host = %self.host_id, pid = self.pid, msg_id, error = %e, "call not sent");
                }
                outcome
            }
            None => CallOutcome::HostDied(self.died().await),
        }
    }

    /// Sends a gateway reply without blocking a thread. A host that leaves its ring full for
    /// `SEND_TIMEOUT` while it waits for a reply is stuck or hostile: it is killed.
    pub async fn reply(&self, reply: GatewayReply) {
        match self.link.send_async(&Message::GatewayReply(reply)).await {
            Ok(()) | Err(LinkError::PeerGone) => {}
            Err(e) => {
                tracing::error!(host = %self.host_id, pid = self.pid, error = %e,
                    "gateway reply not delivered: the host does not read its ring; killing it");
                self.kill.notify_one();
            }
        }
    }

    /// Identity violations of this host's slot so far.
    pub fn violations(&self) -> u64 {
        self.violations.get()
    }

    /// Waits for the death report of this generation (after the host is gone).
    pub async fn died(&self) -> Arc<DeathReport> {
        let mut rx = self.death.clone();
        loop {
            if let Some(r) = rx.borrow().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The slot task is gone without a report: the pool is shutting down.
                return Arc::new(DeathReport {
                    host_id: self.host_id.clone(),
                    pid: self.pid,
                    status: ExitStatus::Exited(-1),
                    crash: None,
                    reclaimed: None,
                    violation: lock(&self.violation).clone(),
                    in_flight: lock(&self.in_flight).clone(),
                });
            }
        }
    }

    /// Kills the host after `grace` unless the call `msg_id` has returned by then (the
    /// documented timeout leaves the plugin running; we end it so the thread does not live
    /// forever).
    pub fn reclaim_after(self: &Arc<Self>, grace: Duration, worker_id: &str, msg_id: u64) {
        let this = Arc::clone(self);
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_running = lock(&this.in_flight).contains_key(&msg_id);
            if still_running && this.death.borrow().is_none() {
                tracing::warn!(host = %this.host_id, pid = this.pid, worker = %worker_id, msg_id,
                    "call still running {grace:?} after its timeout; killing the host to reclaim it");
                *lock(&this.reclaim) = Some((worker_id, msg_id));
                this.kill.notify_one();
            }
        });
    }

    /// Records `what` as the protocol violation this host is ended for, and kills it.
    pub fn cut_off(&self, what: String) {
        lock(&self.violation).get_or_insert(what);
        self.kill.notify_one();
    }

    /// Whether call `msg_id` is still running in this host (e.g. one that timed out).
    pub fn is_running(&self, msg_id: u64) -> bool {
        lock(&self.in_flight).contains_key(&msg_id)
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// A `ProcessResult` nobody waits for: the late answer of a call that timed out or whose
    /// caller left. `false` when no such call is in flight on this host (forged).
    pub(super) fn late_result(&self, r: &ProcessResult) -> bool {
        let mut in_flight = lock(&self.in_flight);
        match in_flight.get(&r.msg_id) {
            Some(w) if *w == r.worker_id => {
                in_flight.remove(&r.msg_id);
                true
            }
            _ => false,
        }
    }
}

/// `Some` outcome when a link error means the frame was not sent (the host lives on).
pub(super) fn send_failure(e: &LinkError) -> Option<CallOutcome> {
    match e {
        LinkError::TooLarge { .. } => Some(CallOutcome::SendFailed {
            reason: e.to_string(),
            too_large: true,
        }),
        LinkError::Send { .. }
        | LinkError::DuplicateRequest { .. }
        | LinkError::NotARequest { .. } => Some(CallOutcome::SendFailed {
            reason: e.to_string(),
            too_large: false,
        }),
        LinkError::PeerGone | LinkError::HostMisbehaved { .. } => None,
    }
}

/// At most 64 bytes of a host-supplied name, for messages.
pub(super) fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
