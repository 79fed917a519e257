//! The link's reader: takes every frame the host sends (control ring and lanes), checks it and
//! routes it, replies to their waiting `request`, everything else to the event stream.
//!
//! Two ways to run it, one routing ([`route`]):
//! - [`run_async`], a task on the supervisor's tokio runtime that drains the rings without
//!   blocking and awaits the region's doorbell eventfd ([`BellWaiter`]) in between: a reply
//!   completes its call's oneshot on the runtime thread itself, so a host's reply wakes one
//!   thread (the runtime's) instead of two (a reader thread, then the runtime). The daemon's
//!   links use it ([`HostLink::new_async`](super::HostLink::new_async)).
//! - [`run_thread`], a std thread blocking in `MultiReceiver::recv` (spin, then the doorbell
//!   futex): for hosts started without the eventfd and for callers outside a runtime.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Inner, Key, LinkError, reply_key};
use crate::protocol::{Message, ProtocolError};
use crate::ring::{BellWaiter, MultiReceiver, RingError, Side, Source};

/// Most frames the async reader routes in a row before it yields to the runtime's other tasks,
/// so a host that floods its rings cannot starve the HTTP server on a one-thread runtime.
pub(super) const MAX_BURST: usize = 64;

/// Checks and routes one frame: `Ok(None)` when it went to its waiting request,
/// `Ok(Some(msg))` for the event stream, `Err(why)` when the host broke the protocol (the
/// region is then marked closed; the caller fails every request with `why`).
fn route(inner: &Inner, source: Source, buf: &[u8]) -> Result<Option<Message>, LinkError> {
    // The host may scribble the to-host control ring's reader index, which the supervisor
    // only reads when it writes there: with lanes that can be rare, so look at it whenever
    // the host sends something (one uncontended lock and a load).
    if let Err(e) = inner.tx.check_peer() {
        tracing::warn!(error = %e, "host scribbled its to-host ring; disconnecting the host");
        return Err(cut_off(inner, format!("its to-host ring is corrupt: {e}")));
    }
    let msg = match Message::decode(buf) {
        Ok(m) => m,
        Err(e) => {
            let e: ProtocolError = e;
            tracing::warn!(error = %e, "host sent an undecodable frame; disconnecting the host");
            return Err(cut_off(inner, e.to_string()));
        }
    };
    let key = reply_key(&msg);
    // One lock for the route check and the removal of the waiter.
    let waiter = match take_waiter(inner, source, &msg, key) {
        Ok(w) => w,
        Err(what) => {
            tracing::warn!(violation = %what, "host broke the lane protocol; disconnecting the host");
            return Err(cut_off(inner, what));
        }
    };
    match waiter {
        Some(tx) => {
            // The requester may have given up (dropped its future): then the reply is dropped.
            let _ = tx.send(Ok(msg));
            Ok(None)
        }
        None => Ok(Some(msg)),
    }
}

fn cut_off(inner: &Inner, reason: String) -> LinkError {
    inner.region.mark_closed(Side::Host);
    LinkError::HostMisbehaved { reason }
}

type Waiter = tokio::sync::oneshot::Sender<Result<Message, LinkError>>;

/// Checks that a frame that came on `source` may be there, and takes its waiter if any;
/// `Err` names the violation.
fn take_waiter(
    inner: &Inner,
    source: Source,
    msg: &Message,
    key: Option<Key>,
) -> Result<Option<Waiter>, String> {
    if let Source::Lane(k) = source
        && !matches!(msg, Message::ProcessResult(_))
    {
        return Err(format!(
            "lane {k} carried a {} frame; lanes carry only ProcessResult",
            msg.kind()
        ));
    }
    let Some(key) = key else {
        return Ok(None);
    };
    let mut pending = inner.pending();
    if let (Source::Lane(k), Message::ProcessResult(r)) = (source, msg) {
        // Sent on this lane, or nobody waits (a late result: the pool checks it is in
        // flight). The control ring carries everything, results of lane calls included (a
        // result too large for its lane comes back there).
        match pending.waiting.get(&key).map(|(_, route)| *route) {
            Some(Some(sent)) if sent as usize == k => {}
            None => {}
            Some(sent) => {
                return Err(format!(
                    "lane {k} carried the result of message {}, which was sent on {}",
                    r.msg_id,
                    sent.map_or("the control ring".to_string(), |j| format!("lane {j}"))
                ));
            }
        }
    }
    Ok(pending.waiting.remove(&key).map(|(tx, _)| tx))
}

/// Maps a ring error of a read to why the link ends.
fn ring_failed(inner: &Inner, e: RingError) -> LinkError {
    match e {
        RingError::PeerGone => LinkError::PeerGone,
        e => {
            tracing::warn!(error = %e, "host ring unusable; disconnecting the host");
            cut_off(inner, e.to_string())
        }
    }
}

/// The reader as a std thread blocking in `MultiReceiver::recv`.
pub(super) fn run_thread(inner: Arc<Inner>, mut rx: MultiReceiver, events: mpsc::Sender<Message>) {
    let mut buf = Vec::new();
    let why = loop {
        let source = match rx.recv(&mut buf, None) {
            Ok(source) => source,
            Err(e) => break ring_failed(&inner, e),
        };
        match route(&inner, source, &buf) {
            Ok(None) => {}
            // Nobody reads events any more: the supervisor is shutting this host down.
            Ok(Some(msg)) => {
                let _ = events.blocking_send(msg);
            }
            Err(why) => break why,
        }
    };
    inner.fail_all(why);
}

/// The reader as a task on the runtime: drain every ring without blocking (yielding every
/// [`MAX_BURST`] frames), then await the doorbell eventfd. A pass that found frames is followed
/// by a yield and another pass before the task sleeps: while the runtime is busy (its other
/// tasks run in between) replies keep being picked up on every round of the scheduler with no
/// signal from the host; when it is idle the second pass comes at once, finds nothing, and the
/// task sleeps.
pub(super) async fn run_async(
    inner: Arc<Inner>,
    mut rx: MultiReceiver,
    mut bell: BellWaiter,
    events: mpsc::Sender<Message>,
) {
    let mut buf = Vec::new();
    // Frames taken since the last wake-up (the bell counts wake-ups that found none).
    let mut since_wake = 0;
    let why = 'read: loop {
        let mut drained = 0;
        loop {
            let source = match rx.try_recv(&mut buf) {
                Ok(Some(source)) => source,
                Ok(None) => break,
                Err(e) => break 'read ring_failed(&inner, e),
            };
            drained += 1;
            match route(&inner, source, &buf) {
                Ok(None) => {}
                // A full channel makes this task wait, and the host in turn feels
                // backpressure on its ring; a closed one means the host is being shut down.
                Ok(Some(msg)) => {
                    let _ = events.send(msg).await;
                }
                Err(why) => break 'read why,
            }
            if drained % MAX_BURST == 0 {
                tokio::task::yield_now().await;
            }
        }
        since_wake += drained;
        if drained > 0 {
            tokio::task::yield_now().await;
            continue;
        }
        if let Err(e) = bell.wait(&rx, since_wake).await {
            // Our own eventfd failing is not the host's fault, but without it nothing would
            // wake this task again: cut the host off rather than leave its calls hanging.
            tracing::error!(error = %e, "cannot await the host's doorbell; disconnecting the host");
            break cut_off(&inner, format!("the supervisor lost its doorbell: {e}"));
        }
        since_wake = 0;
    };
    if bell.throttled() > 0 {
        tracing::info!(
            pauses = bell.throttled(),
            "doorbell throttling ended with the link"
        );
    }
    inner.fail_all(why);
}
