//! Lanes: an SPSC pair per worker thread, beside the two control rings.
//!
//! A host's worker thread reads its `Process` frames from its lane's to-host ring and writes
//! its results into the lane's from-host ring, so a call passes two threads (the caller and the
//! worker thread) instead of three (caller, the host's frame loop, the worker thread). The
//! control rings keep everything else (load, unload, ping, stats, gateway, logs) and every
//! frame too large for a lane. See docs/ring.md, "Lanes".
//!
//! The supervisor reads every from-host ring with one [`MultiReceiver`]: it polls the control
//! ring and each lane in turn (every one validated exactly like the control ring: a lane's
//! writer is the host, as untrusted as on the control ring), and when all are empty it spins,
//! then sleeps on one futex, the region's doorbell, which every host writer rings after it
//! publishes (spsc `publish`).

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::layout::{BELL_EVENTFD, BELL_FUTEX};
use super::spsc::{Polled, Reader};
use super::wait::{SAFETY_NET, SpinBudget, futex_wait};
use super::{FROM_HOST, FrameReceiver, FrameSender, Region, RingError, TO_HOST, channels};

/// The ring number of lane `k`'s to-host direction (its from-host one is the next).
pub(crate) const fn lane_ring(k: usize) -> usize {
    2 + 2 * k
}

/// Host: the ends of lane `k` (from-host sender, to-host receiver). One owner per lane at a
/// time: the worker thread the supervisor assigned it to.
pub fn host_lane(r: Arc<Region>, k: usize) -> Result<(FrameSender, FrameReceiver), RingError> {
    if k >= r.lanes() {
        return Err(RingError::Config {
            reason: format!(
                "lane {k} does not exist: the region has {} lanes (RING_LANES)",
                r.lanes()
            ),
        });
    }
    Ok(channels(
        r,
        lane_ring(k) + FROM_HOST,
        lane_ring(k) + TO_HOST,
    ))
}

/// Supervisor: the control sender, one sender per lane, and the receiver of every from-host
/// ring. Call once per region (instead of `supervisor_channels`).
pub fn supervisor_lanes(r: Arc<Region>) -> (FrameSender, Vec<FrameSender>, MultiReceiver) {
    let (tx, rx) = super::supervisor_channels(r.clone());
    let lanes = (0..r.lanes())
        .map(|k| channels(r.clone(), lane_ring(k) + TO_HOST, lane_ring(k) + FROM_HOST).0)
        .collect();
    let readers = (0..r.lanes())
        .map(|k| Reader::new(&r, lane_ring(k) + FROM_HOST))
        .collect();
    let multi = MultiReceiver {
        region: r,
        control: rx,
        lanes: readers,
        next: 0,
        burst: 0,
        spin: SpinBudget::default(),
    };
    (tx, lanes, multi)
}

/// Most frames the supervisor's reader takes from one lane in a row before it looks at the
/// next lane first.
pub(crate) const BURST: u32 = 32;

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The control ring.
    Control,
    /// Lane `k`.
    Lane(usize),
}

/// Wakes one ring's reader if it sleeps (see [`FrameReceiver::recv_or`]).
#[derive(Debug, Clone)]
pub struct ReaderNudge {
    region: Arc<Region>,
    ring: usize,
}

impl ReaderNudge {
    pub(crate) fn new(region: Arc<Region>, ring: usize) -> ReaderNudge {
        ReaderNudge { region, ring }
    }

    /// Wakes the reader if it announced it sleeps; a load and a fence otherwise.
    pub fn nudge(&self) {
        self.region.nudge_reader(self.ring);
    }
}

/// The supervisor's receiver of the control ring and every lane (from-host direction).
#[derive(Debug)]
pub struct MultiReceiver {
    region: Arc<Region>,
    control: FrameReceiver,
    lanes: Vec<Reader>,
    /// The lane polled first next time (round robin, so a busy lane cannot starve the others).
    next: usize,
    /// Frames taken in a row from lane `next`.
    burst: u32,
    spin: SpinBudget,
}

impl MultiReceiver {
    /// Lanes read besides the control ring.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The spin budget of the lanes' wait.
    pub fn spin(&self) -> SpinBudget {
        self.spin
    }

    /// Replaces the spin budget of both the control ring and the lanes.
    pub fn set_spin(&mut self, spin: SpinBudget) {
        self.spin = spin;
        self.control.set_spin(spin);
    }

    /// Takes the next frame of any ring without waiting: `Ok(None)` if all are empty. A
    /// corrupt lane is `Corrupt` naming the lane (and stays so: the host must go).
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<Option<Source>, RingError> {
        // Closed flag before the tails (as `FrameReceiver::try_recv`).
        let closed = self.region.any_closed();
        if let Some(src) = self.poll_all(buf)? {
            return Ok(Some(src));
        }
        if closed {
            return Err(RingError::PeerGone);
        }
        Ok(None)
    }

    fn poll_all(&mut self, buf: &mut Vec<u8>) -> Result<Option<Source>, RingError> {
        let n = self.lanes.len();
        for i in 0..n {
            let k = (self.next + i) % n;
            // An empty lane costs one tail load; the full, validated read only where the tail
            // moved (or a broken lane, which must keep saying so).
            if !self.lanes[k].has_data(&self.region) && !self.lanes[k].is_broken() {
                continue;
            }
            match self.lanes[k].poll(&self.region, buf) {
                Ok(Polled::Frame) => {
                    // Stay on a lane that delivers for up to BURST frames in a row (under load
                    // its next frame is likely there already), then move on, so a busy lane
                    // cannot starve the others.
                    self.burst = if k == self.next { self.burst + 1 } else { 1 };
                    if self.burst >= BURST {
                        self.next = (k + 1) % n;
                        self.burst = 0;
                    } else {
                        self.next = k;
                    }
                    return Ok(Some(Source::Lane(k)));
                }
                Ok(Polled::Empty) => {}
                Err(RingError::Corrupt { what }) => {
                    return Err(RingError::Corrupt {
                        what: format!("lane {k}: {what}"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if self.control.try_recv(buf)? {
            return Ok(Some(Source::Control));
        }
        Ok(None)
    }

    fn anything(&self) -> bool {
        self.region.any_closed()
            || self
                .lanes
                .iter()
                .chain(std::iter::once(&self.control.reader))
                .any(|r| r.has_data(&self.region))
    }

    /// The async reader's half of the doorbell's Dekker pair (docs/ring.md, "The runtime
    /// reads its lanes"): announces that it is going to await the region's eventfd, then
    /// re-checks every ring. `false`: something arrived (or a side closed) meanwhile, the
    /// announcement is withdrawn and the caller reads instead of sleeping. `true`: every host
    /// writer that publishes from now on signals the eventfd; call
    /// [`MultiReceiver::end_bell_sleep`] once awake.
    pub fn announce_bell_sleep(&self) -> bool {
        let bell = self.region.doorbell();
        bell.waiting.store(BELL_EVENTFD, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.anything() {
            bell.waiting.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Withdraws [`MultiReceiver::announce_bell_sleep`]: writers stop signalling (the busy
    /// path makes no system call).
    pub fn end_bell_sleep(&self) {
        self.region.doorbell().waiting.store(0, Ordering::Relaxed);
    }

    /// The region read from.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Waits for the next frame of any ring (spin, then the doorbell futex; `None` waits until
    /// one arrives or a side is closed). Frames published before a close are still delivered;
    /// then `PeerGone`.
    pub fn recv(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Source, RingError> {
        if self.lanes.is_empty() {
            // A region without lanes (maybe an older host, which rings no doorbell): the
            // control ring's own wait.
            return self.control.recv(buf, timeout).map(|()| Source::Control);
        }
        // The clock is read only once nothing is ready (a frame already waiting, the common
        // case under load, costs no clock read); the timeout counts from that first miss.
        let mut start = None;
        loop {
            if let Some(src) = self.try_recv(buf)? {
                return Ok(src);
            }
            let begin = Instant::now();
            let start = *start.get_or_insert(begin);
            if self.spin.spin(begin, || self.anything()) {
                self.spin.spun(begin.elapsed());
                continue;
            }
            let bell = self.region.doorbell();
            loop {
                let elapsed = start.elapsed();
                if let Some(t) = timeout
                    && elapsed >= t
                {
                    return Err(RingError::Timeout);
                }
                let nap = timeout.map_or(SAFETY_NET, |t| (t - elapsed).min(SAFETY_NET));
                let seq = bell.seq.load(Ordering::Acquire);
                bell.waiting.store(BELL_FUTEX, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if self.anything() {
                    bell.waiting.store(0, Ordering::Relaxed);
                    break;
                }
                futex_wait(&bell.seq, seq, nap);
                bell.waiting.store(0, Ordering::Relaxed);
                if self.anything() {
                    break;
                }
            }
            self.spin.slept(begin.elapsed());
        }
    }
}
