//! The supervisor's async side of one host: requests with awaited replies, plus a stream of
//! host-initiated messages.
//!
//! A reader (`link/reader.rs`) takes every frame from every from-host ring (the control ring
//! and the lanes), decodes it (after it was copied out of shared memory) and routes it:
//! replies to the oneshot of the matching `request`, everything else to the mpsc returned with
//! the link. The daemon's reader is a task on its tokio runtime that awaits the region's
//! doorbell eventfd ([`HostLink::new_async`]), so a reply wakes the runtime thread directly;
//! [`HostLink::new`] keeps the older std thread blocking on the doorbell futex, for hosts
//! started without the eventfd.
//!
//! **Lanes** (docs/ring.md): a worker loaded with [`HostLink::assign_lanes`] has a lane per
//! thread; its `Process` frames go to the lane with the fewest calls in flight (lane = the
//! thread's concurrency slot), or to the control ring when the frame is too large for a lane.
//! The host is untrusted on lanes too: a lane may carry only `ProcessResult`s, and only for
//! calls sent on that lane (or late ones nobody waits for, which the pool checks); anything
//! else cuts the host off as misbehaving.
//!
//! **Invariant:** once the link is dead (peer died, ring closed or corrupt), `pending` is empty
//! and stays empty: `request` checks `dead` under the same lock that `fail_all` drains under.

use crate::sync::Locked as _;
use crate::sync::RwLocked as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Message;
use crate::ring::{self, BellWaiter, FrameSender, Region, RingError, Side};

/// How long a send may wait for room in a full to-host ring before failing with `Full`.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of the host-initiated message channel; when the supervisor falls behind, the
/// reader thread waits, and the host in turn feels backpressure on its ring.
pub const EVENTS_CAPACITY: usize = 1024;

/// Errors of a host link.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The host died or its ring was closed; the request may or may not have run.
    #[error("the host is gone (died or its ring was closed); the request may not have run")]
    PeerGone,
    /// The host broke the protocol (corrupt ring or undecodable frame) and was cut off.
    #[error("the host misbehaved and was disconnected: {reason}")]
    HostMisbehaved {
        /// What it did.
        reason: String,
    },
    /// The frame could not be written into the ring (full, too large).
    #[error("could not send {kind} to the host: {reason}")]
    Send {
        /// Kind of the message.
        kind: &'static str,
        /// The ring's error text (it names the setting to raise, if any).
        reason: String,
    },
    /// The frame is over the ring's frame limit; sending it again can never work.
    #[error(
        "{kind} of {len} bytes exceeds the ring's frame limit of {max} bytes (RING_MAX_FRAME_BYTES)"
    )]
    TooLarge {
        /// Kind of the message.
        kind: &'static str,
        /// Size of the encoded frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `request` was called with a message that has no reply.
    #[error("{kind} has no reply; use HostLink::send for it")]
    NotARequest {
        /// Kind of the message.
        kind: &'static str,
    },
    /// A request with the same id is already waiting for its reply.
    #[error("a {kind} with id {id} is already in flight on this host; ids must be unique")]
    DuplicateRequest {
        /// Kind of the message.
        kind: &'static str,
        /// Its id.
        id: u64,
    },
}

/// The reply kinds, for matching replies to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReplyKind {
    ProcessResult,
    LoadResult,
    UnloadResult,
    Pong,
    Stats,
}

type Key = (ReplyKind, u64);
type Reply = Result<Message, LinkError>;

/// The key of the reply a request expects.
fn request_key(m: &Message) -> Option<Key> {
    Some(match m {
        Message::Process(p) => (ReplyKind::ProcessResult, p.msg_id),
        Message::LoadWorker(l) => (ReplyKind::LoadResult, l.request_id),
        Message::UnloadWorker(u) => (ReplyKind::UnloadResult, u.request_id),
        Message::Ping { nonce } => (ReplyKind::Pong, *nonce),
        Message::StatsRequest { request_id } => (ReplyKind::Stats, *request_id),
        _ => return None,
    })
}

/// The key a reply answers.
fn reply_key(m: &Message) -> Option<Key> {
    Some(match m {
        Message::ProcessResult(r) => (ReplyKind::ProcessResult, r.msg_id),
        Message::LoadResult(r) => (ReplyKind::LoadResult, r.request_id),
        Message::UnloadResult(r) => (ReplyKind::UnloadResult, r.request_id),
        Message::Pong { nonce } => (ReplyKind::Pong, *nonce),
        Message::Stats(s) => (ReplyKind::Stats, s.request_id),
        _ => return None,
    })
}

/// Where a request went: the control ring or a lane.
type Route = Option<u32>;

#[derive(Default)]
struct Pending {
    dead: Option<LinkError>,
    waiting: HashMap<Key, (oneshot::Sender<Reply>, Route)>,
}

/// The supervisor's end of one lane.
struct Lane {
    tx: FrameSender,
    /// Calls sent on this lane whose request has not ended (the routing weight).
    in_flight: AtomicU32,
}

/// Which worker owns which lanes.
#[derive(Default)]
struct LaneTable {
    owner: Vec<Option<String>>,
    by_worker: HashMap<String, Arc<[u32]>>,
}

struct Inner {
    region: Arc<Region>,
    tx: FrameSender,
    lanes: Vec<Lane>,
    /// Read on every call (a read lock, no writer while calls flow), written at load/unload.
    table: RwLock<LaneTable>,
    /// Largest frame a lane carries.
    lane_max_frame: usize,
    pending: Mutex<Pending>,
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while holding this lock; a poisoned map is still consistent.
        self.pending.locked()
    }

    /// Marks the link dead and fails every pending request with `why`.
    fn fail_all(&self, why: LinkError) {
        let drained: Vec<_> = {
            let mut p = self.pending();
            if p.dead.is_none() {
                p.dead = Some(why.clone());
            }
            p.waiting.drain().collect()
        };
        for (_, (tx, _)) in drained {
            let _ = tx.send(Err(why.clone()));
        }
    }
}

/// Clone-able handle on one host's rings (supervisor side).
#[derive(Clone)]
pub struct HostLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLink")
            .field("region", &self.inner.region)
            .finish()
    }
}

/// Removes a pending entry when a `request` future ends (reply or dropped), and gives back
/// its lane's place.
struct PendingGuard<'a> {
    inner: &'a Inner,
    key: Key,
    route: Route,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.pending().waiting.remove(&self.key);
        if let Some(lane) = self.route.and_then(|k| self.inner.lanes.get(k as usize)) {
            lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl HostLink {
    /// Starts a reader thread on the from-host rings (blocking on the doorbell futex).
    /// Host-initiated frames (Ready, Log, GatewayCall, Stats, Pong, ProcessResult for unknown
    /// ids) go to the returned receiver; replies are matched to `request` calls by (kind, id).
    /// The receiver ends (`None`) when the link dies. Call once per region (it takes the
    /// supervisor's ends of the rings). For a host that was given the region's doorbell
    /// eventfd, prefer [`HostLink::new_async`].
    pub fn new(region: Arc<Region>) -> (HostLink, mpsc::Receiver<Message>) {
        let (link, rx, events_tx, events_rx) = HostLink::parts(region);
        link.start_thread(rx, events_tx);
        (link, events_rx)
    }

    /// As [`HostLink::new`], but the reader is a task on the current tokio runtime that
    /// awaits the region's doorbell eventfd: a host's frames wake the runtime thread directly,
    /// with no reader thread in between (docs/ring.md, "The runtime reads its lanes"). The
    /// host must have been given the eventfd (`host-runner --bell-fd`), or its frames wait
    /// for its calls' deadlines. Call inside a runtime with I/O enabled; outside one (or if
    /// the eventfd cannot be registered) it falls back to the reader thread, which works with
    /// any host.
    pub fn new_async(region: Arc<Region>) -> (HostLink, mpsc::Receiver<Message>) {
        let (link, rx, events_tx, events_rx) = HostLink::parts(region);
        let runtime = tokio::runtime::Handle::try_current();
        match (runtime, BellWaiter::new(&link.inner.region)) {
            (Ok(rt), Ok(bell)) => {
                rt.spawn(reader::run_async(link.inner.clone(), rx, bell, events_tx));
            }
            (Err(_), _) => link.start_thread(rx, events_tx),
            (_, Err(e)) => {
                tracing::warn!(error = %e, "the host link falls back to a reader thread");
                link.start_thread(rx, events_tx);
            }
        }
        (link, events_rx)
    }

    fn parts(
        region: Arc<Region>,
    ) -> (
        HostLink,
        ring::MultiReceiver,
        mpsc::Sender<Message>,
        mpsc::Receiver<Message>,
    ) {
        let (tx, lane_tx, rx) = ring::supervisor_lanes(region.clone());
        let lanes: Vec<Lane> = lane_tx
            .into_iter()
            .map(|tx| Lane {
                tx,
                in_flight: AtomicU32::new(0),
            })
            .collect();
        let table = LaneTable {
            owner: vec![None; lanes.len()],
            by_worker: HashMap::new(),
        };
        let inner = Arc::new(Inner {
            lane_max_frame: region.config().lane_max_frame(),
            region,
            tx,
            lanes,
            table: RwLock::new(table),
            pending: Mutex::new(Pending::default()),
        });
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        (HostLink { inner }, rx, events_tx, events_rx)
    }

    fn start_thread(&self, rx: ring::MultiReceiver, events_tx: mpsc::Sender<Message>) {
        let reader_inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("wm-host-link".into())
            .spawn(move || reader::run_thread(reader_inner, rx, events_tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the host link reader thread; host unusable");
            self.inner.region.mark_closed(Side::Host);
            self.inner.fail_all(LinkError::PeerGone);
        }
    }

    /// Sends and awaits the matching reply: Process -> ProcessResult (msg_id),
    /// LoadWorker -> LoadResult, UnloadWorker -> UnloadResult (request_id), Ping -> Pong (nonce),
    /// StatsRequest -> Stats. Fails with PeerGone as soon as the host is marked dead.
    /// Dropping the future forgets the request (a late reply goes to the event stream).
    pub async fn request(&self, msg: Message) -> Result<Message, LinkError> {
        let kind = msg.kind();
        let key = request_key(&msg).ok_or(LinkError::NotARequest { kind })?;
        let frame = msg.encode();
        let route = match &msg {
            Message::Process(p) if frame.len() <= self.inner.lane_max_frame => {
                self.pick_lane(&p.worker_id)
            }
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending();
            if let Some(why) = &p.dead {
                return Err(why.clone());
            }
            if p.waiting.contains_key(&key) {
                return Err(LinkError::DuplicateRequest { kind, id: key.1 });
            }
            p.waiting.insert(key, (tx, route));
        }
        if let Some(lane) = route.and_then(|k| self.inner.lanes.get(k as usize)) {
            lane.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let guard = PendingGuard {
            inner: &self.inner,
            key,
            route,
        };
        let sender = match route.and_then(|k| self.inner.lanes.get(k as usize)) {
            Some(lane) => &lane.tx,
            None => &self.inner.tx,
        };
        self.send_frame_async(sender, kind, &frame).await?;
        let reply = rx.await.unwrap_or(Err(LinkError::PeerGone));
        drop(guard);
        reply
    }

    /// The lane of `worker_id` with the fewest calls in flight (`None`: it has no lanes).
    fn pick_lane(&self, worker_id: &str) -> Route {
        let table = self.inner.table.read_locked();
        let lanes = table.by_worker.get(worker_id)?;
        lanes.iter().copied().min_by_key(|&k| {
            self.inner
                .lanes
                .get(k as usize)
                .map_or(u32::MAX, |l| l.in_flight.load(Ordering::Relaxed))
        })
    }

    /// Gives `worker_id` up to `threads` free lanes (its threads' lanes, in thread order) and
    /// returns them for its `LoadWorker`; a worker that has lanes keeps them (a reload). Fewer
    /// (or none) when the region's lanes (`RING_LANES`) are taken: those threads take their
    /// calls from the control ring.
    pub fn assign_lanes(&self, worker_id: &str, threads: u32) -> Vec<u32> {
        let mut table = self.inner.table.write_locked();
        if let Some(l) = table.by_worker.get(worker_id) {
            return l.to_vec();
        }
        let free: Vec<u32> = table
            .owner
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_none())
            .map(|(k, _)| k as u32)
            .take(threads as usize)
            .collect();
        if free.is_empty() {
            return free;
        }
        for &k in &free {
            table.owner[k as usize] = Some(worker_id.to_string());
        }
        table
            .by_worker
            .insert(worker_id.to_string(), free.clone().into());
        free
    }

    /// Frees the lanes of `worker_id` (after its `UnloadResult`, or when its load failed):
    /// no call is routed to them any more.
    pub fn release_lanes(&self, worker_id: &str) {
        let mut table = self.inner.table.write_locked();
        if let Some(lanes) = table.by_worker.remove(worker_id) {
            for &k in lanes.iter() {
                if let Some(o) = table.owner.get_mut(k as usize) {
                    *o = None;
                }
            }
        }
    }

    /// The lanes `worker_id` holds (empty: its calls take the control ring).
    pub fn lanes_of(&self, worker_id: &str) -> Vec<u32> {
        let table = self.inner.table.read_locked();
        table
            .by_worker
            .get(worker_id)
            .map(|l| l.to_vec())
            .unwrap_or_default()
    }

    /// Maps a ring error of a send. The to-host ring's reader index is host memory: an
    /// inconsistent one means the host scribbled it, so the link is cut off as misbehaving
    /// (the pool then ends the host and names the violation) instead of failing every later
    /// send to a host that otherwise looks alive.
    fn send_failed(&self, kind: &'static str, e: RingError) -> LinkError {
        if let RingError::Corrupt { what } = &e {
            let why = LinkError::HostMisbehaved {
                reason: format!("its to-host ring is corrupt: {what}"),
            };
            self.inner.region.mark_closed(Side::Host);
            self.inner.fail_all(why.clone());
            return why;
        }
        send_error(kind, e)
    }

    /// Fire and forget from a plain thread (tests, tools). May block the calling thread for up
    /// to `SEND_TIMEOUT` when the ring is full: never call it from async code; use
    /// [`HostLink::try_send`] or [`HostLink::send_async`] there.
    pub fn send(&self, msg: &Message) -> Result<(), LinkError> {
        let frame = msg.encode();
        self.inner
            .tx
            .send(&frame, SEND_TIMEOUT)
            .map_err(|e| self.send_failed(msg.kind(), e))
    }

    /// Sends only if the ring has room right now; never waits (`Send` with the ring's `Full`
    /// text otherwise). For frames that may be skipped (stats requests, a shutdown notice the
    /// caller backs with a kill).
    pub fn try_send(&self, msg: &Message) -> Result<(), LinkError> {
        let frame = msg.encode();
        self.inner
            .tx
            .send(&frame, Duration::ZERO)
            .map_err(|e| self.send_failed(msg.kind(), e))
    }

    /// Sends without blocking any thread: a quick attempt, then (ring full) retries on a timer
    /// until `SEND_TIMEOUT`. A host that stops reading its ring costs this future (and the
    /// encoded frame) for at most `SEND_TIMEOUT`, and no thread; then `Send` (ring full).
    pub async fn send_async(&self, msg: &Message) -> Result<(), LinkError> {
        self.send_frame_async(&self.inner.tx, msg.kind(), &msg.encode())
            .await
    }

    async fn send_frame_async(
        &self,
        tx: &FrameSender,
        kind: &'static str,
        frame: &[u8],
    ) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + SEND_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        loop {
            match tx.send(frame, Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(RingError::Full) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(self.send_failed(kind, e)),
            }
        }
    }

    /// The pool calls this when waitpid/pidfd says the child died: marks the region closed,
    /// fails every pending request with PeerGone, ends the reader (thread or task). Call it after
    /// every child exit, clean ones included: dropping the handles alone does not stop it.
    pub fn peer_died(&self) {
        self.inner.region.mark_closed(Side::Host);
        self.inner.fail_all(LinkError::PeerGone);
    }

    /// Why the link died (None while it lives): `HostMisbehaved` names the protocol violation.
    pub fn dead_reason(&self) -> Option<LinkError> {
        self.inner.pending().dead.clone()
    }

    /// Whether the link is dead (no request can succeed any more).
    pub fn is_dead(&self) -> bool {
        self.inner.pending().dead.is_some()
    }

    /// Requests waiting for a reply right now.
    pub fn in_flight(&self) -> usize {
        self.inner.pending().waiting.len()
    }

    /// The region (host state, crash slots).
    pub fn region(&self) -> &Arc<Region> {
        &self.inner.region
    }
}

fn send_error(kind: &'static str, e: RingError) -> LinkError {
    match e {
        RingError::PeerGone => LinkError::PeerGone,
        RingError::TooLarge { len, max } => LinkError::TooLarge { kind, len, max },
        e => LinkError::Send {
            kind,
            reason: e.to_string(),
        },
    }
}

mod reader;

#[cfg(test)]
mod tests;
