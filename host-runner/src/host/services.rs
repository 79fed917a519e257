//! What plugins and worker threads reach through the ring: results to the supervisor
//! ([`RingOutbox`], over the lock-free [`ReplyLane`]) and the host services of the C ABI (log,
//! gateway calls: [`RingServices`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;
use wm_shared::sync::Locked as _;

use wm_shared::protocol::{self, Message};
use wm_shared::ring::{FrameSender, RingError};

use super::replies::ReplyLane;
use super::{SEND_TIMEOUT, send};
use crate::engine::ProcessOutcome;
use crate::ffi::callbacks::{GatewayFailure, HostServices};
use crate::sandbox::log;
use crate::worker::Outbox;

/// Results to the supervisor. Load, unload and call results share one [`ReplyLane`], so a
/// worker's `UnloadResult` never overtakes the results of its last calls.
pub(super) struct RingOutbox {
    lane: ReplyLane,
}

impl RingOutbox {
    pub(super) fn new(tx: FrameSender) -> RingOutbox {
        RingOutbox {
            lane: ReplyLane::new(tx),
        }
    }

    /// Posts `m`, unless its frame is over the ring's limit (then it is logged and dropped:
    /// the supervisor's load timeout reports the missing answer).
    fn post(&self, m: &Message) {
        let frame = m.encode();
        if frame.len() > self.lane.max_frame() {
            log(&format!(
                "cannot send {}: {}",
                m.kind(),
                RingError::TooLarge {
                    len: frame.len(),
                    max: self.lane.max_frame()
                }
            ));
            return;
        }
        self.lane.post(frame);
    }
}

impl Outbox for RingOutbox {
    fn load_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>) {
        let (ok, error) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        self.post(&Message::LoadResult(protocol::LoadResult {
            request_id,
            worker_id: worker_id.into(),
            ok,
            error,
        }));
    }

    fn unload_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>) {
        let (ok, error) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        self.post(&Message::UnloadResult(protocol::UnloadResult {
            request_id,
            worker_id: worker_id.into(),
            ok,
            error,
        }));
    }

    fn process_result(&self, msg_id: u64, worker_id: &str, o: ProcessOutcome) {
        let frame = self.result_frame(msg_id, worker_id, o);
        self.lane.post(frame);
    }

    fn result_frame(&self, msg_id: u64, worker_id: &str, o: ProcessOutcome) -> Vec<u8> {
        let elapsed_ns = o.elapsed_ns;
        let encoded = Message::ProcessResult(protocol::ProcessResult {
            msg_id,
            worker_id: worker_id.into(),
            status: o.status.to_wire(),
            code: o.code,
            response: o.response,
            error: o.error,
            elapsed_ns,
        })
        .encode();
        if encoded.len() <= self.lane.max_frame() {
            return encoded;
        }
        // The response was checked against the frame limit, but a long error text or worker
        // id could still push the frame over: answer without the payload.
        Message::ProcessResult(protocol::ProcessResult {
            msg_id,
            worker_id: worker_id.into(),
            status: protocol::ResultStatus::InvalidResponse,
            error: "the reply frame exceeds the ring's frame limit".into(),
            elapsed_ns,
            ..Default::default()
        })
        .encode()
    }

    fn post_frame(&self, frame: Vec<u8>) {
        if frame.len() <= self.lane.max_frame() {
            self.lane.post(frame);
        } else {
            log(&format!(
                "cannot send a result frame of {} bytes: over the ring's frame limit",
                frame.len()
            ));
        }
    }
}

/// The callbacks' traffic: `Log` frames, and `GatewayCall`s matched to their replies.
pub(super) struct RingServices {
    tx: FrameSender,
    pending: Mutex<HashMap<u64, SyncSender<protocol::GatewayReply>>>,
    next_call: AtomicU64,
}

impl RingServices {
    pub(super) fn new(tx: FrameSender) -> RingServices {
        RingServices {
            tx,
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
        }
    }

    /// Hands a `GatewayReply` to the call waiting for it; a late reply (after a timeout) is
    /// dropped.
    pub(super) fn deliver(&self, reply: protocol::GatewayReply) {
        let waiter = self.pending.locked().remove(&reply.call_id);
        match waiter {
            Some(w) => {
                let _ = w.try_send(reply);
            }
            None => log(&format!(
                "dropping a GatewayReply for call {} (timed out or unknown)",
                reply.call_id
            )),
        }
    }
}

impl HostServices for RingServices {
    fn log(&self, worker_id: &str, msg_id: u64, level: i32, message: &str) {
        send(
            &self.tx,
            &Message::Log(protocol::Log {
                worker_id: worker_id.into(),
                msg_id,
                level,
                message: message.into(),
            }),
        );
    }

    fn gateway_call(
        &self,
        worker_id: &str,
        msg_id: u64,
        service: &str,
        method: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, GatewayFailure> {
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (wake, wait) = sync_channel(1);
        self.pending.locked().insert(call_id, wake);
        let forget = || {
            self.pending.locked().remove(&call_id);
        };
        let call = Message::GatewayCall(protocol::GatewayCall {
            call_id,
            worker_id: worker_id.into(),
            msg_id,
            service: service.into(),
            method: method.into(),
            payload: payload.to_vec(),
        });
        if let Err(e) = self.tx.send(&call.encode(), timeout.min(SEND_TIMEOUT)) {
            forget();
            log(&format!("gateway call {call_id} not sent: {e}"));
            return Err(GatewayFailure::Unavailable);
        }
        match wait.recv_timeout(timeout) {
            Ok(r) if r.status == 0 => Ok(r.payload),
            Ok(r) => Err(GatewayFailure::Status(r.status)),
            Err(_) => {
                forget();
                Err(GatewayFailure::Timeout)
            }
        }
    }
}
