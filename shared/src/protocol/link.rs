//! The supervisor's async side of one host: requests with awaited replies, plus a stream of
//! host-initiated messages.
//!
//! tokio cannot wait on a futex, so each link owns a dedicated std thread that blocks in
//! `MultiReceiver::recv` on every from-host ring (the control ring and the lanes), decodes each
//! frame (after it was copied out of shared memory) and routes it: replies to the oneshot of the
//! matching `request`, everything else to the mpsc returned by [`HostLink::new`].
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Message, ProtocolError};
use crate::ring::{self, FrameSender, MultiReceiver, Region, RingError, Side, Source};

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
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// Starts a reader thread on the from-host ring. Host-initiated frames (Ready, Log,
    /// GatewayCall, Stats, Pong, ProcessResult for unknown ids) go to the returned receiver;
    /// replies are matched to `request` calls by (kind, id). The receiver ends (`None`) when the
    /// link dies. Call once per region (it takes the supervisor's ends of the rings).
    pub fn new(region: Arc<Region>) -> (HostLink, mpsc::Receiver<Message>) {
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
        let reader_inner = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("wm-host-link".into())
            .spawn(move || reader_loop(reader_inner, rx, events_tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the host link reader thread; host unusable");
            inner.region.mark_closed(Side::Host);
            inner.fail_all(LinkError::PeerGone);
        }
        (HostLink { inner }, events_rx)
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
        let table = self
            .inner
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner);
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
        let mut table = self
            .inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner);
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
        let mut table = self
            .inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner);
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
        let table = self
            .inner
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner);
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
    /// fails every pending request with PeerGone, ends the reader thread. Call it after every
    /// child exit, clean ones included: dropping the handles alone does not stop the thread.
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

/// Checks that a frame that came on `source` may be there; `Err` names the violation.
fn check_route(
    inner: &Inner,
    source: Source,
    msg: &Message,
    key: Option<Key>,
) -> Result<(), String> {
    let Source::Lane(k) = source else {
        // The control ring carries everything, results of lane calls included (a result too
        // large for its lane comes back here).
        return Ok(());
    };
    let Message::ProcessResult(r) = msg else {
        return Err(format!(
            "lane {k} carried a {} frame; lanes carry only ProcessResult",
            msg.kind()
        ));
    };
    let route = key.and_then(|key| inner.pending().waiting.get(&key).map(|(_, route)| *route));
    match route {
        // Sent on this lane, or nobody waits (a late result: the pool checks it is in flight).
        Some(Some(sent)) if sent as usize == k => Ok(()),
        None => Ok(()),
        Some(sent) => Err(format!(
            "lane {k} carried the result of message {}, which was sent on {}",
            r.msg_id,
            sent.map_or("the control ring".to_string(), |j| format!("lane {j}"))
        )),
    }
}

fn reader_loop(inner: Arc<Inner>, mut rx: MultiReceiver, events: mpsc::Sender<Message>) {
    let mut buf = Vec::new();
    let why = loop {
        let source = match rx.recv(&mut buf, None) {
            Ok(source) => source,
            Err(RingError::PeerGone) => break LinkError::PeerGone,
            Err(e) => {
                tracing::warn!(error = %e, "host ring unusable; disconnecting the host");
                inner.region.mark_closed(Side::Host);
                break LinkError::HostMisbehaved {
                    reason: e.to_string(),
                };
            }
        };
        // The host may scribble the to-host control ring's reader index, which the supervisor
        // only reads when it writes there: with lanes that can be rare, so look at it whenever
        // the host sends something (one uncontended lock and a load).
        if let Err(e) = inner.tx.check_peer() {
            tracing::warn!(error = %e, "host scribbled its to-host ring; disconnecting the host");
            inner.region.mark_closed(Side::Host);
            break LinkError::HostMisbehaved {
                reason: format!("its to-host ring is corrupt: {e}"),
            };
        }
        let msg = match Message::decode(&buf) {
            Ok(m) => m,
            Err(e) => {
                let e: ProtocolError = e;
                tracing::warn!(error = %e, "host sent an undecodable frame; disconnecting the host");
                inner.region.mark_closed(Side::Host);
                break LinkError::HostMisbehaved {
                    reason: e.to_string(),
                };
            }
        };
        let key = reply_key(&msg);
        if let Err(what) = check_route(&inner, source, &msg, key) {
            tracing::warn!(violation = %what, "host broke the lane protocol; disconnecting the host");
            inner.region.mark_closed(Side::Host);
            break LinkError::HostMisbehaved { reason: what };
        }
        let waiter = key.and_then(|k| inner.pending().waiting.remove(&k));
        match waiter {
            Some((tx, _)) => {
                // The requester may have given up (dropped its future): then the reply is dropped.
                let _ = tx.send(Ok(msg));
            }
            None => {
                // Nobody reads events any more: the supervisor is shutting this host down.
                let _ = events.blocking_send(msg);
            }
        }
    };
    inner.fail_all(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Process, ProcessResult, ResultStatus};
    use crate::ring::RingConfig;

    fn pair() -> (Arc<Region>, Arc<Region>) {
        let sup = Arc::new(Region::create("wm-link-test", &RingConfig::default()).unwrap());
        let fd = sup.as_fd().try_clone_to_owned().unwrap();
        let host = Arc::new(Region::open(fd).unwrap());
        (sup, host)
    }

    /// A host thread answering Process and Ping, and sending one Log first.
    fn fake_host(host: Arc<Region>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (tx, mut rx) = ring::host_channels(host);
            let log = Message::Log(crate::protocol::Log {
                message: "hello".into(),
                ..Default::default()
            });
            tx.send(&log.encode(), Duration::from_secs(5)).unwrap();
            let mut buf = Vec::new();
            while rx.recv(&mut buf, None).is_ok() {
                let reply = match Message::decode(&buf).unwrap() {
                    Message::Process(p) => Message::ProcessResult(ProcessResult {
                        msg_id: p.msg_id,
                        worker_id: p.worker_id,
                        status: ResultStatus::Ok,
                        response: p.event,
                        ..Default::default()
                    }),
                    Message::Ping { nonce } => Message::Pong { nonce },
                    Message::StatsRequest { .. } => continue, // never answered
                    Message::Shutdown { .. } => break,
                    other => panic!("unexpected {other:?}"),
                };
                if tx.send(&reply.encode(), Duration::from_secs(5)).is_err() {
                    break;
                }
            }
        })
    }

    async fn watchdog<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("watchdog: test hung")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_get_their_own_replies_and_events_flow() {
        watchdog(async {
            let (sup, host) = pair();
            let h = fake_host(host);
            let (link, mut events) = HostLink::new(sup);
            let ev = events.recv().await.unwrap();
            assert!(matches!(ev, Message::Log(l) if l.message == "hello"));
            let mut tasks = Vec::new();
            for i in 0..50u64 {
                let link = link.clone();
                tasks.push(tokio::spawn(async move {
                    let r = link
                        .request(Message::Process(Process {
                            msg_id: i,
                            worker_id: format!("w{i}"),
                            event: vec![i as u8; i as usize],
                        }))
                        .await
                        .unwrap();
                    match r {
                        Message::ProcessResult(r) => {
                            assert_eq!(r.msg_id, i);
                            assert_eq!(r.response, vec![i as u8; i as usize]);
                        }
                        other => panic!("{other:?}"),
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(
                link.request(Message::Ping { nonce: 9 }).await.unwrap(),
                Message::Pong { nonce: 9 }
            );
            assert!(matches!(
                link.request(Message::Shutdown { deadline_ms: 1 }).await,
                Err(LinkError::NotARequest { .. })
            ));
            link.send(&Message::Shutdown { deadline_ms: 1 }).unwrap();
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_died_fails_pending_requests_and_ends_the_event_stream() {
        watchdog(async {
            let (sup, host) = pair();
            let h = fake_host(host);
            let (link, mut events) = HostLink::new(sup);
            let _ = events.recv().await; // the Log
            let l2 = link.clone();
            let pending =
                tokio::spawn(
                    async move { l2.request(Message::StatsRequest { request_id: 1 }).await },
                );
            while link.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            link.peer_died();
            assert!(matches!(pending.await.unwrap(), Err(LinkError::PeerGone)));
            assert!(matches!(
                link.request(Message::Ping { nonce: 1 }).await,
                Err(LinkError::PeerGone)
            ));
            assert!(events.recv().await.is_none());
            assert!(link.is_dead());
            tokio::task::spawn_blocking(move || h.join().unwrap())
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undecodable_frame_disconnects_the_host() {
        watchdog(async {
            let (sup, host) = pair();
            let (link, mut events) = HostLink::new(sup.clone());
            let l2 = link.clone();
            let pending = tokio::spawn(async move { l2.request(Message::Ping { nonce: 3 }).await });
            let (htx, _hrx) = ring::host_channels(host);
            while link.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            htx.send(b"not a flatbuffer at all", Duration::from_secs(1))
                .unwrap();
            assert!(matches!(
                pending.await.unwrap(),
                Err(LinkError::HostMisbehaved { .. })
            ));
            assert!(events.recv().await.is_none());
            assert!(sup.is_closed(Side::Host));
        })
        .await;
    }

    fn result_for(p: Process) -> Message {
        Message::ProcessResult(ProcessResult {
            msg_id: p.msg_id,
            worker_id: p.worker_id,
            status: ResultStatus::Ok,
            response: p.event,
            ..Default::default()
        })
    }

    /// A host thread serving lane `k`: answers each Process on the lane, counts them.
    fn lane_host(host: Arc<Region>, k: usize) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let (tx, mut rx) = ring::host_lane(host, k).unwrap();
            let mut buf = Vec::new();
            let mut served = 0;
            while rx.recv(&mut buf, None).is_ok() {
                let Ok(Message::Process(p)) = Message::decode(&buf) else {
                    panic!("lane {k} got something else than a Process");
                };
                served += 1;
                if tx
                    .send(&result_for(p).encode(), Duration::from_secs(5))
                    .is_err()
                {
                    break;
                }
            }
            served
        })
    }

    fn process(msg_id: u64, worker: &str) -> Message {
        Message::Process(Process {
            msg_id,
            worker_id: worker.into(),
            event: msg_id.to_le_bytes().to_vec(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_of_a_worker_with_lanes_take_its_lanes_and_others_the_control_ring() {
        watchdog(async {
            let (sup, host) = pair();
            let control = fake_host(host.clone());
            let (link, mut events) = HostLink::new(sup.clone());
            let _ = events.recv().await; // the fake host's Log
            assert_eq!(link.assign_lanes("w", 2), vec![0, 1]);
            assert_eq!(
                link.assign_lanes("w", 2),
                vec![0, 1],
                "a reload keeps its lanes"
            );
            assert_eq!(link.assign_lanes("v", 1), vec![2]);
            let lanes: Vec<_> = (0..3).map(|k| lane_host(host.clone(), k)).collect();
            let mut tasks = Vec::new();
            for i in 0..40u64 {
                let link = link.clone();
                let worker = ["w", "v", "nolanes"][i as usize % 3];
                tasks.push(tokio::spawn(async move {
                    match link.request(process(i, worker)).await.unwrap() {
                        Message::ProcessResult(r) => {
                            assert_eq!((r.msg_id, r.response), (i, i.to_le_bytes().to_vec()))
                        }
                        other => panic!("{other:?}"),
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // A frame too large for a lane takes the control ring.
            let big = Message::Process(Process {
                msg_id: 99,
                worker_id: "v".into(),
                event: vec![7; sup.config().lane_max_frame() + 1],
            });
            assert!(matches!(
                link.request(big).await.unwrap(),
                Message::ProcessResult(r) if r.msg_id == 99
            ));
            assert_eq!(link.in_flight(), 0);
            link.release_lanes("w");
            assert!(link.lanes_of("w").is_empty());
            assert_eq!(link.assign_lanes("u", 4), vec![0, 1, 3, 4]);
            link.peer_died();
            let served: Vec<usize> = lanes.into_iter().map(|h| h.join().unwrap()).collect();
            // 40 calls: 14 for w over lanes 0 and 1, 13 for v on lane 2, 13 on the control ring.
            assert_eq!(served[0] + served[1], 14, "{served:?}");
            assert_eq!(served[2], 13, "{served:?}");
            tokio::task::spawn_blocking(move || control.join().unwrap())
                .await
                .unwrap();
        })
        .await;
    }

    /// The host answers a call sent on lane 0 on lane 1: cut off as misbehaving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_on_another_lane_than_its_call_cuts_the_host_off() {
        watchdog(async {
            let (sup, host) = pair();
            let (link, mut events) = HostLink::new(sup.clone());
            assert_eq!(link.assign_lanes("w", 1), vec![0]);
            let h = std::thread::spawn(move || {
                let (_, mut rx0) = ring::host_lane(host.clone(), 0).unwrap();
                let (tx1, _) = ring::host_lane(host, 1).unwrap();
                let mut buf = Vec::new();
                rx0.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
                let Ok(Message::Process(p)) = Message::decode(&buf) else {
                    panic!("expected a Process on lane 0");
                };
                tx1.send(&result_for(p).encode(), Duration::from_secs(5))
                    .unwrap();
            });
            let r = link.request(process(5, "w")).await;
            assert!(
                matches!(&r, Err(LinkError::HostMisbehaved { reason }) if reason.contains("lane 1") && reason.contains("lane 0")),
                "{r:?}"
            );
            assert!(events.recv().await.is_none());
            assert!(sup.is_closed(Side::Host));
            h.join().unwrap();
        })
        .await;
    }

    /// A lane carries only results: a Log (or anything else) on a lane cuts the host off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anything_but_a_result_on_a_lane_cuts_the_host_off() {
        watchdog(async {
            let (sup, host) = pair();
            let (link, mut events) = HostLink::new(sup.clone());
            let (tx, _) = ring::host_lane(host, 3).unwrap();
            let log = Message::Log(crate::protocol::Log {
                message: "sneaky".into(),
                ..Default::default()
            });
            tx.send(&log.encode(), Duration::from_secs(1)).unwrap();
            assert!(events.recv().await.is_none(), "the Log must not be delivered");
            assert!(matches!(
                link.dead_reason(),
                Some(LinkError::HostMisbehaved { reason }) if reason.contains("lanes carry only ProcessResult")
            ));
        })
        .await;
    }

    /// A result on a lane that nobody waits for (a late answer, or a forged one) goes to the
    /// event stream, where the pool checks it against the calls in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_nobody_waits_for_on_a_lane_goes_to_the_events() {
        watchdog(async {
            let (sup, host) = pair();
            let (link, mut events) = HostLink::new(sup);
            let (tx, _) = ring::host_lane(host, 2).unwrap();
            let Message::Process(p) = process(77, "w") else {
                unreachable!()
            };
            tx.send(&result_for(p).encode(), Duration::from_secs(1))
                .unwrap();
            assert!(matches!(
                events.recv().await,
                Some(Message::ProcessResult(r)) if r.msg_id == 77
            ));
            assert!(!link.is_dead());
        })
        .await;
    }

    /// The host moves the to-host control ring's reader index while its calls go through a
    /// lane: the link notices at the next frame the host sends, not at its next control send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scribbled_control_ring_is_noticed_while_calls_take_lanes() {
        watchdog(async {
            let (sup, host) = pair();
            let (link, mut events) = HostLink::new(sup.clone());
            assert_eq!(link.assign_lanes("w", 1), vec![0]);
            let h = std::thread::spawn(move || {
                let (tx, mut rx) = ring::host_lane(host.clone(), 0).unwrap();
                let mut buf = Vec::new();
                rx.recv(&mut buf, Some(Duration::from_secs(10))).unwrap();
                let Ok(Message::Process(p)) = Message::decode(&buf) else {
                    panic!("expected a Process on lane 0");
                };
                host.ctl(0).head.store(0x5A5A_5A58, std::sync::atomic::Ordering::Release);
                tx.send(&result_for(p).encode(), Duration::from_secs(5))
                    .unwrap();
            });
            let r = link.request(process(1, "w")).await;
            assert!(
                matches!(&r, Err(LinkError::HostMisbehaved { reason }) if reason.contains("to-host ring is corrupt")),
                "{r:?}"
            );
            assert!(events.recv().await.is_none());
            h.join().unwrap();
        })
        .await;
    }
}
