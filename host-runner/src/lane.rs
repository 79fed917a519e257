//! A worker thread's ring lane: its own SPSC pair in the host's region (docs/ring.md, "Lanes").
//!
//! The supervisor assigns lanes in `LoadWorker.lanes` (thread i serves `lanes[i]`); the thread
//! reads its `Process` frames from the lane's to-host ring and writes its results into the
//! lane's from-host ring itself, so the frame loop is not on the path of a call and a call
//! passes two threads instead of three. A lane is claimed here for as long as its thread lives,
//! so even a supervisor that named one lane twice cannot give it two readers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wm_shared::sync::Locked as _;

use flatbuffers::FlatBufferBuilder;
use wm_shared::ring::{self, FrameReceiver, FrameSender, ReaderNudge, Region};

/// Which lanes are taken by a living thread, and each lane's call in flight.
#[derive(Debug, Default)]
pub struct LaneClaims {
    taken: Mutex<Vec<bool>>,
    /// One counter per lane, written only by the lane's thread. They are not one shared
    /// counter because four lane threads on two CPUs would pass its cache line back and forth
    /// twice per call (docs/benchmarks.md, "Lanes: fifth pass").
    in_flight: Box<[LaneCount]>,
}

/// A lane's calls in flight (0 or 1: its thread runs one call at a time), alone on its cache
/// line (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct LaneCount(AtomicU32);

/// One claimed lane; the claim ends when it is dropped (its thread ended).
pub struct Lane {
    pub index: u32,
    pub tx: FrameSender,
    pub rx: FrameReceiver,
    /// Largest frame the lane carries; larger results take the control ring.
    pub max_frame: usize,
    /// The thread's reused builder for its result frames (no allocation per call).
    pub builder: FlatBufferBuilder<'static>,
    claims: Arc<LaneClaims>,
}

/// How long a lane send may wait for the supervisor to make room.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

impl LaneClaims {
    /// Claims and counters for a region of `lanes` lanes.
    pub fn new(lanes: usize) -> Self {
        LaneClaims {
            taken: Mutex::new(vec![false; lanes]),
            in_flight: (0..lanes).map(|_| LaneCount::default()).collect(),
        }
    }

    /// Calls running on lane threads now (a gauge for `Stats`; each counter is exact, the
    /// sum is taken without stopping the threads).
    pub fn in_flight(&self) -> u32 {
        self.in_flight
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Claims lane `k` of `region`; `Err` says why not (no such lane, or taken).
    pub fn claim(self: &Arc<Self>, region: &Arc<Region>, k: u32) -> Result<Lane, String> {
        let mut taken = self.taken.locked();
        let n = region.lanes();
        if taken.len() < n {
            taken.resize(n, false);
        }
        match taken.get_mut(k as usize) {
            None => return Err(format!("lane {k} does not exist (the region has {n})")),
            Some(true) => return Err(format!("lane {k} is already served by another thread")),
            Some(t) => *t = true,
        }
        drop(taken);
        match ring::host_lane(region.clone(), k as usize) {
            Ok((tx, rx)) => Ok(Lane {
                index: k,
                tx,
                rx,
                max_frame: region.config().lane_max_frame(),
                builder: FlatBufferBuilder::with_capacity(1024),
                claims: self.clone(),
            }),
            Err(e) => {
                self.release(k);
                Err(e.to_string())
            }
        }
    }

    fn release(&self, k: u32) {
        let mut taken = self.taken.locked();
        if let Some(t) = taken.get_mut(k as usize) {
            *t = false;
        }
    }
}

impl Lane {
    /// Counts a call as in flight on this lane until [`Lane::call_done`]. Only this lane's
    /// thread writes its counter, so a plain load and store do (no locked instruction).
    pub fn call_started(&self) {
        self.add_in_flight(1);
    }

    /// Ends what [`Lane::call_started`] began.
    pub fn call_done(&self) {
        self.add_in_flight(u32::MAX); // -1, wrapping
    }

    fn add_in_flight(&self, d: u32) {
        if let Some(c) = self.claims.in_flight.get(self.index as usize) {
            c.0.store(
                c.0.load(Ordering::Relaxed).wrapping_add(d),
                Ordering::Relaxed,
            );
        }
    }

    /// Wakes this lane's thread if it sleeps (after queuing work it must also see).
    pub fn nudger(&self) -> ReaderNudge {
        self.rx.nudger()
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.claims.release(self.index);
    }
}
