//! Per-worker threads and queues, hot reload, unload.
//!
//! Each worker owns a FIFO queue and `max_concurrency` threads pulling from it (one thread
//! keeps the worker's order; a hung plugin blocks only its own worker). The queue is a
//! [`Handoff`]: a thread waiting for work spins briefly before it sleeps, so back-to-back
//! calls pass from the frame loop to the worker thread without a futex wake-up. The loaded library
//! sits behind an `Arc` swapped on hot reload: a call clones the `Arc` when it starts, so an
//! in-flight call finishes on the old library, which is unloaded when its last call ends.
//!
//! Every thread that runs plugin code (calls, loads, unloads) holds an alternate signal stack
//! and marks itself with `crash::enter_call`, so the crash handler can name the culprit.
//!
//! Results leave through an [`Outbox`] (the ring, in the binary).
//!
//! **Lanes:** a thread given a ring lane at load (`LoadWorker.lanes`, see [`crate::lane`])
//! reads its calls from the lane and answers on it; it also serves the worker's queue, which
//! then carries only the calls the supervisor sent through the control ring (frames too large
//! for a lane). The frame loop nudges the lane threads when it queues one.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wm_shared::sync::Locked as _;
use wm_shared::sync::RwLocked as _;

use wm_shared::protocol::{Message, hot};
use wm_shared::ring::{ReaderNudge, Region, RingError};

use crate::crash;
use crate::engine::{Engine, LoadSpec, ProcessOutcome, ResultStatus, error_chain};
use crate::handoff::Handoff;
use crate::lane::{Lane, LaneClaims};

/// Where a worker's results go.
pub trait Outbox: Send + Sync + 'static {
    fn load_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>);
    fn unload_result(&self, request_id: u64, worker_id: &str, result: Result<(), String>);
    fn process_result(&self, msg_id: u64, worker_id: &str, outcome: ProcessOutcome);
    /// The encoded `ProcessResult` frame of a call (for a lane; at most the control ring's
    /// frame limit).
    fn result_frame(&self, msg_id: u64, worker_id: &str, outcome: ProcessOutcome) -> Vec<u8>;
    /// Sends an encoded frame through the control ring (a result too large for its lane).
    fn post_frame(&self, frame: Vec<u8>);
}

/// Most queued calls a single-threaded worker takes per wake-up.
const BATCH: usize = 64;

/// A loaded worker; unloaded (under a crash mark) when the last reference drops.
struct Loaded<E: Engine> {
    engine: Arc<E>,
    worker_id: String,
    worker: Option<E::Worker>,
}

impl<E: Engine> Loaded<E> {
    fn unload(mut self) -> Result<(), String> {
        match self.worker.take() {
            Some(w) => {
                let _mark = crash::enter_call(&self.worker_id, 0);
                self.engine.unload(w).map_err(|e| error_chain(&e))
            }
            None => Ok(()),
        }
    }
}

impl<E: Engine> Drop for Loaded<E> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let _mark = crash::enter_call(&self.worker_id, 0);
            if let Err(e) = self.engine.unload(w) {
                crate::sandbox::log(&format!(
                    "worker {}: unloading the replaced library failed: {}",
                    self.worker_id,
                    error_chain(&e)
                ));
            }
        }
    }
}

struct Slot<E: Engine> {
    current: RwLock<Option<Arc<Loaded<E>>>>,
    /// Set by unload: a reload finishing afterwards must not install its library.
    closed: AtomicBool,
}

struct Job {
    msg_id: u64,
    event: Vec<u8>,
}

struct Handle<E: Engine> {
    queue: Arc<Handoff<Job>>,
    slot: Arc<Slot<E>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Wakes the worker's lane threads after a push or a close of `queue`.
    nudges: Vec<ReaderNudge>,
}

impl<E: Engine> Handle<E> {
    fn nudge(&self) {
        for n in &self.nudges {
            n.nudge();
        }
    }
}

/// The set of workers of one host.
pub struct Workers<E: Engine, O: Outbox> {
    engine: Arc<E>,
    outbox: Arc<O>,
    map: Mutex<HashMap<String, Handle<E>>>,
    in_flight: Arc<AtomicU32>,
    /// Unload and reload threads, joined at shutdown.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// The region whose lanes `LoadWorker.lanes` names (none: every call via the queue).
    region: Option<Arc<Region>>,
    claims: Arc<LaneClaims>,
}

impl<E: Engine, O: Outbox> Workers<E, O> {
    pub fn new(engine: Arc<E>, outbox: Arc<O>) -> Arc<Self> {
        Self::build(engine, outbox, None)
    }

    /// As [`Workers::new`], with the lanes of `region` for the workers' threads.
    pub fn with_lanes(engine: Arc<E>, outbox: Arc<O>, region: Arc<Region>) -> Arc<Self> {
        Self::build(engine, outbox, Some(region))
    }

    fn build(engine: Arc<E>, outbox: Arc<O>, region: Option<Arc<Region>>) -> Arc<Self> {
        let lanes = region.as_ref().map_or(0, |r| r.lanes());
        Arc::new(Workers {
            engine,
            outbox,
            map: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicU32::new(0)),
            background: Mutex::new(Vec::new()),
            region,
            claims: Arc::new(LaneClaims::new(lanes)),
        })
    }

    /// Claims the lanes named for a new worker's threads (`None` for a thread without one).
    fn claim_lanes(&self, worker_id: &str, lanes: &[u32], threads: u32) -> Vec<Option<Lane>> {
        let Some(region) = &self.region else {
            return Vec::new();
        };
        lanes
            .iter()
            .take(threads as usize)
            .map(|&k| match self.claims.claim(region, k) {
                Ok(l) => Some(l),
                Err(e) => {
                    crate::sandbox::log(&format!(
                        "worker {worker_id}: not serving lane {k}: {e}; that thread takes its \
                         calls from the control ring"
                    ));
                    None
                }
            })
            .collect()
    }

    /// Workers loaded (or loading).
    pub fn count(&self) -> u32 {
        self.map.locked().len() as u32
    }

    /// Calls accepted and not yet answered: those of the control ring and those running on
    /// lane threads (each lane counts its own).
    pub fn in_flight(&self) -> u32 {
        self.in_flight
            .load(Ordering::Relaxed)
            .wrapping_add(self.claims.in_flight())
    }

    /// `LoadWorker`: a new worker gets its queue and threads (thread i serving `lanes[i]`, if
    /// named); an existing one is reloaded beside the running library (its threads keep their
    /// lanes). The result is sent when the load finished.
    pub fn load(self: &Arc<Self>, request_id: u64, spec: LoadSpec, lanes: &[u32]) {
        let mut map = self.map.locked();
        if let Some(h) = map.get(&spec.worker_id) {
            let slot = h.slot.clone();
            drop(map);
            self.spawn_background(format!("reload {}", spec.worker_id), {
                let this = self.clone();
                move || this.reload(request_id, spec, slot)
            });
            return;
        }
        let queue = Arc::new(Handoff::default());
        let slot = Arc::new(Slot {
            current: RwLock::new(None),
            closed: AtomicBool::new(false),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        let lanes = self.claim_lanes(&spec.worker_id, lanes, spec.max_concurrency.max(1));
        map.insert(
            spec.worker_id.clone(),
            Handle {
                queue: queue.clone(),
                slot: slot.clone(),
                threads: threads.clone(),
                nudges: lanes.iter().flatten().map(Lane::nudger).collect(),
            },
        );
        drop(map);
        let this = self.clone();
        let name = thread_name(&spec.worker_id, 0);
        let list = threads.clone();
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || this.first_thread(request_id, spec, slot, queue, list, lanes));
        match spawned {
            // Unload joins it with the others; it is pushed before this frame handler returns,
            // so before any UnloadWorker for this worker is handled.
            Ok(t) => threads.locked().push(t),
            Err(e) => crate::sandbox::log(&format!("cannot start a worker thread: {e}")),
        }
    }

    /// Thread 0 of a new worker: loads, reports, starts the other threads, then serves.
    fn first_thread(
        self: Arc<Self>,
        request_id: u64,
        spec: LoadSpec,
        slot: Arc<Slot<E>>,
        queue: Arc<Handoff<Job>>,
        threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
        lanes: Vec<Option<Lane>>,
    ) {
        let _alt = crash::AltStack::install();
        let worker_id = spec.worker_id.clone();
        let mut lanes = lanes.into_iter();
        let lane0 = lanes.next().flatten();
        let loaded = {
            let _mark = crash::enter_call(&worker_id, 0);
            self.engine.load(&spec)
        };
        match loaded {
            Ok(w) => {
                let loaded = Arc::new(Loaded {
                    engine: self.engine.clone(),
                    worker_id: worker_id.clone(),
                    worker: Some(w),
                });
                {
                    let mut cur = slot.current.write_locked();
                    // A reload requested while this first load ran may have finished first:
                    // the newer version wins, this one is unloaded (after the lock is released).
                    let stale = if cur.is_none() {
                        *cur = Some(loaded);
                        None
                    } else {
                        Some(loaded)
                    };
                    drop(cur);
                    drop(stale);
                }
                self.outbox.load_result(request_id, &worker_id, Ok(()));
                for i in 1..spec.max_concurrency.max(1) {
                    let this = self.clone();
                    let (slot, queue, id) = (slot.clone(), queue.clone(), worker_id.clone());
                    let lane = lanes.next().flatten();
                    match std::thread::Builder::new()
                        .name(thread_name(&worker_id, i))
                        .spawn(move || {
                            let _alt = crash::AltStack::install();
                            this.serve(&id, &slot, &queue, 1, lane)
                        }) {
                        Ok(t) => threads.locked().push(t),
                        Err(e) => crate::sandbox::log(&format!(
                            "worker {worker_id}: cannot start thread {i}: {e}"
                        )),
                    }
                }
                // One thread takes whatever is queued at each wake-up; several threads take
                // one call each, so that they share the work.
                let batch = if spec.max_concurrency <= 1 { BATCH } else { 1 };
                self.serve(&worker_id, &slot, &queue, batch, lane0);
            }
            Err(e) => {
                // Remove the entry first (pushes happen under the map lock): from then on no
                // Process reaches this queue, so draining it below answers every message that
                // did.
                self.map.locked().remove(&worker_id);
                queue.close();
                self.outbox
                    .load_result(request_id, &worker_id, Err(error_chain(&e)));
                while let Some(job) = queue.try_pop() {
                    self.answer_unknown(job.msg_id, &worker_id);
                }
            }
        }
    }

    /// A worker thread's loop: until the queue is closed (unload, shutdown).
    ///
    /// Takes up to `batch` queued calls per wake-up (one lock instead of one per call) and
    /// runs them in order; each call still carries its own crash mark, so a crash names the
    /// call it happened in and the rest of the batch (in flight at the supervisor) are
    /// bystanders.
    fn serve(
        &self,
        worker_id: &str,
        slot: &Slot<E>,
        queue: &Handoff<Job>,
        batch: usize,
        lane: Option<Lane>,
    ) {
        if let Some(lane) = lane {
            return self.serve_lane(worker_id, slot, queue, batch, lane);
        }
        let mut spin = crate::handoff::spin_budget();
        let mut jobs = VecDeque::new();
        while queue.pop_batch(&mut spin, batch, &mut jobs) {
            while let Some(job) = jobs.pop_front() {
                self.run(worker_id, slot, job);
            }
        }
    }

    /// A lane thread's loop: the calls of its lane (answered on the lane), and the worker's
    /// queue (answered through the control ring), until the queue is closed; then what is
    /// left in both. The wait spins with the ring's budget, then sleeps on the lane's futex,
    /// which the frame loop nudges when it queues a call or closes the queue.
    fn serve_lane(
        &self,
        worker_id: &str,
        slot: &Slot<E>,
        queue: &Handoff<Job>,
        batch: usize,
        mut lane: Lane,
    ) {
        lane.rx.set_spin(crate::handoff::spin_budget());
        // Frames, the frame loop's nudges (a queued call, an unload) and the region's close all
        // wake this thread: it needs no 100 ms safety net, like the hand-off's sleepers.
        lane.rx.set_nap(crate::handoff::NAP);
        let mut buf = Vec::new();
        let mut jobs = VecDeque::new();
        loop {
            match lane.rx.recv_or(&mut buf, None, &|| queue.ready()) {
                Ok(true) => {
                    self.lane_call(worker_id, slot, &mut lane, &buf);
                    continue;
                }
                Ok(false) => {}
                // The supervisor closed the region: the host is ending.
                Err(RingError::PeerGone) => return,
                Err(e) => {
                    crate::sandbox::log(&format!(
                        "worker {worker_id}: lane {} unusable: {e}; its thread ends",
                        lane.index
                    ));
                    return;
                }
            }
            if !queue.take_ready(batch, &mut jobs) {
                // Unloaded: answer what is still in the lane, then end (the lane is freed).
                while let Ok(true) = lane.rx.try_recv(&mut buf) {
                    self.lane_call(worker_id, slot, &mut lane, &buf);
                }
                return;
            }
            while let Some(job) = jobs.pop_front() {
                self.run(worker_id, slot, job);
            }
        }
    }

    /// One frame from a lane: a `Process` of this worker is run and answered on the lane.
    /// The frame is read in place (a verified view of the thread's copy) and the result
    /// encoded into the lane's builder: no allocation on this path besides the plugin's own.
    fn lane_call(&self, worker_id: &str, slot: &Slot<E>, lane: &mut Lane, frame: &[u8]) {
        let p = match hot::decode_process(frame) {
            Ok(Some(p)) => p,
            Ok(None) => {
                let kind = Message::decode(frame).map_or("undecodable", |m| m.kind());
                crate::sandbox::log(&format!(
                    "lane {}: ignoring a {kind} frame (lanes carry Process only)",
                    lane.index,
                ));
                return;
            }
            Err(e) => {
                crate::sandbox::log(&format!(
                    "lane {}: ignoring an undecodable frame: {e}",
                    lane.index
                ));
                return;
            }
        };
        let outcome = if p.worker_id == worker_id {
            lane.call_started();
            let outcome = self.call(worker_id, slot, p.msg_id, p.event);
            lane.call_done();
            outcome
        } else {
            // A lane outlives nothing: a frame left for a worker that was unloaded.
            ProcessOutcome::failed(
                ResultStatus::UnknownWorker,
                format!(
                    "worker {} is not served on lane {}",
                    p.worker_id, lane.index
                ),
            )
        };
        let bytes = hot::encode_process_result_into(
            &mut lane.builder,
            &hot::ProcessResultRef {
                msg_id: p.msg_id,
                worker_id: p.worker_id,
                status: outcome.status.to_wire(),
                code: outcome.code,
                response: &outcome.response,
                error: &outcome.error,
                elapsed_ns: outcome.elapsed_ns,
            },
        );
        if bytes.len() > lane.max_frame {
            // Too large for the lane: the control ring (which also trims what exceeds its own
            // limit).
            let frame = self.outbox.result_frame(p.msg_id, p.worker_id, outcome);
            self.outbox.post_frame(frame);
            return;
        }
        match lane.tx.send(bytes, crate::lane::SEND_TIMEOUT) {
            Ok(()) | Err(RingError::PeerGone) => {}
            Err(e) => crate::sandbox::log(&format!(
                "lane {}: cannot send the result of message {}: {e}",
                lane.index, p.msg_id
            )),
        }
        // The reply's copy is in the frame now: its buffer serves the next call's copy.
        crate::engine::reply_buf::recycle(outcome.response);
    }

    /// One call: run it under its crash mark, then answer.
    fn run(&self, worker_id: &str, slot: &Slot<E>, job: Job) {
        let outcome = self.call(worker_id, slot, job.msg_id, &job.event);
        // Counted by `process` when it was queued; uncounted before the answer.
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.outbox.process_result(job.msg_id, worker_id, outcome);
    }

    /// Runs one call under its crash mark (the caller counts it in flight and uncounts it
    /// before the answer).
    fn call(&self, worker_id: &str, slot: &Slot<E>, msg_id: u64, event: &[u8]) -> ProcessOutcome {
        let lib = slot.current.read_locked().clone();
        let outcome = match lib.as_ref().and_then(|l| l.worker.as_ref().map(|w| (l, w))) {
            Some((_, w)) => {
                let _mark = crash::enter_call(worker_id, msg_id);
                // Engines do not panic on plugin misbehaviour; this only keeps a host bug
                // from silently killing the worker's thread and its queue with it.
                catch_unwind(AssertUnwindSafe(|| self.engine.process(w, msg_id, event)))
                    .unwrap_or_else(|_| {
                        ProcessOutcome::failed(
                            ResultStatus::ProcessFailed,
                            "host-runner bug: the engine panicked during this call",
                        )
                    })
            }
            None => ProcessOutcome::failed(
                ResultStatus::UnknownWorker,
                format!("worker {worker_id} is not loaded"),
            ),
        };
        // Releasing the library may unload a replaced version (hot reload): do it before
        // answering, so the supervisor never sees the reply before the old code is gone.
        drop(lib);
        outcome
    }

    fn answer_unknown(&self, msg_id: u64, worker_id: &str) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.outbox.process_result(
            msg_id,
            worker_id,
            ProcessOutcome::failed(
                ResultStatus::UnknownWorker,
                format!("worker {worker_id} is not loaded on this host"),
            ),
        );
    }

    /// Hot reload: load the new version beside the old one, then swap. Calls already running
    /// keep the old version until they return; it is unloaded after the last of them.
    fn reload(&self, request_id: u64, spec: LoadSpec, slot: Arc<Slot<E>>) {
        let _alt = crash::AltStack::install();
        let worker_id = spec.worker_id.clone();
        let loaded = {
            let _mark = crash::enter_call(&worker_id, 0);
            self.engine.load(&spec)
        };
        match loaded {
            Ok(w) => {
                let new = Arc::new(Loaded {
                    engine: self.engine.clone(),
                    worker_id: worker_id.clone(),
                    worker: Some(w),
                });
                if slot.closed.load(Ordering::Acquire) {
                    drop(new);
                    self.outbox.load_result(
                        request_id,
                        &worker_id,
                        Err(format!(
                            "worker {worker_id} was unloaded while its new version was loading"
                        )),
                    );
                    return;
                }
                let old = slot.current.write_locked().replace(new);
                // The old version goes when its last in-flight call ends (maybe right here).
                drop(old);
                self.outbox.load_result(request_id, &worker_id, Ok(()));
            }
            Err(e) => self
                .outbox
                .load_result(request_id, &worker_id, Err(error_chain(&e))),
        }
    }

    /// `Process`: queue the call on its worker, or answer UnknownWorker at once.
    pub fn process(&self, msg_id: u64, worker_id: &str, event: Vec<u8>) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let map = self.map.locked();
        let sent = match map.get(worker_id) {
            Some(h) => {
                let ok = h.queue.push(Job { msg_id, event }).is_ok();
                h.nudge();
                ok
            }
            None => false,
        };
        drop(map);
        if !sent {
            self.answer_unknown(msg_id, worker_id);
        }
    }

    /// `UnloadWorker`: close the queue (queued calls still run), wait for the threads, unload
    /// the library, then report. Runs in the background so a hung plugin blocks nothing else.
    pub fn unload(self: &Arc<Self>, request_id: u64, worker_id: &str) {
        let handle = self.map.locked().remove(worker_id);
        let Some(handle) = handle else {
            self.outbox.unload_result(
                request_id,
                worker_id,
                Err(format!("worker {worker_id} is not loaded on this host")),
            );
            return;
        };
        let this = self.clone();
        let id = worker_id.to_string();
        self.spawn_background(format!("unload {id}"), move || {
            let result = this.finish(handle);
            this.outbox.unload_result(request_id, &id, result);
        });
    }

    fn finish(&self, handle: Handle<E>) -> Result<(), String> {
        let Handle {
            queue,
            slot,
            threads,
            nudges,
        } = handle;
        slot.closed.store(true, Ordering::Release);
        queue.close();
        for n in &nudges {
            n.nudge();
        }
        // Thread 0 may still be starting the others: take the list only once it is complete,
        // i.e. join until it stays empty.
        loop {
            let batch: Vec<_> = threads.locked().drain(..).collect();
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
        let current = slot.current.write_locked().take();
        match current.map(Arc::try_unwrap) {
            None => Ok(()),
            Some(Ok(loaded)) => {
                let _alt = crash::AltStack::install();
                loaded.unload()
            }
            // Still referenced (a call of a thread we could not join): it unloads when
            // that call ends.
            Some(Err(_)) => Ok(()),
        }
    }

    /// `Shutdown`: unload every worker, waiting at most `deadline`. Returns whether all of
    /// them finished in time.
    pub fn shutdown(self: &Arc<Self>, deadline: Duration) -> bool {
        let handles: Vec<_> = self.map.locked().drain().collect();
        let (done_tx, done_rx) = channel();
        let n = handles.len();
        for (_, h) in handles {
            let this = self.clone();
            let done = done_tx.clone();
            // Detached on purpose: a hung plugin must not hold up the exit.
            let _ = std::thread::Builder::new()
                .name("shutdown".into())
                .spawn(move || {
                    let _ = this.finish(h);
                    let _ = done.send(());
                });
        }
        let until = Instant::now() + deadline;
        for _ in 0..n {
            let left = until.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                return false;
            }
        }
        true
    }

    fn spawn_background(&self, name: String, f: impl FnOnce() + Send + 'static) {
        let name: String = name.chars().take(15).collect();
        match std::thread::Builder::new().name(name).spawn(f) {
            Ok(t) => self.background_push(t),
            Err(e) => crate::sandbox::log(&format!("cannot start a background thread: {e}")),
        }
    }

    fn background_push(&self, t: JoinHandle<()>) {
        let mut bg = self.background.locked();
        // Forget finished threads so the list does not grow with every reload.
        bg.retain(|t| !t.is_finished());
        bg.push(t);
    }
}

fn thread_name(worker_id: &str, i: u32) -> String {
    // Linux keeps 15 bytes of a thread name.
    let short: String = worker_id.chars().take(10).collect();
    format!("w{i}:{short}")
}
