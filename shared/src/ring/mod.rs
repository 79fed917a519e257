//! Shared-memory transport between the supervisor and one host-runner.
//!
//! One [`Region`] per host: a `memfd` mapped by both processes, holding a header, crash slots
//! and two single-producer single-consumer byte rings (to-host, from-host) of length-prefixed,
//! 8-byte-aligned frames. See docs/ring.md for the layout, the wait protocol and the numbers.
//!
//! # Layout
//! - `layout`: the `#[repr(C)]` header, ring control blocks and crash slots, with const asserts.
//! - `memfd`: [`Region`]: create, map, validate, close.
//! - `spsc`: framing and the index/wake protocol (the part `ring::loom` model-checks).
//! - `wait`: futex wrappers and the adaptive spin budget.
//! - `bell`: the supervisor's async wait on the region's doorbell eventfd (feature `tokio`).
//!
//! Settings: `RING_BYTES` (capacity of each direction) and `RING_MAX_FRAME_BYTES` (largest
//! frame) are read by the supervisor's configuration into [`RingConfig`].

#[cfg(feature = "tokio")]
mod bell;
mod lanes;
pub mod layout;
mod memfd;
mod spsc;
pub mod wait;

#[cfg(all(test, loom))]
mod loom;

use crate::sync::Locked as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "tokio")]
pub use bell::{BellWaiter, SPURIOUS_BEFORE_THROTTLE, THROTTLE};
pub use lanes::{MultiReceiver, ReaderNudge, Source, host_lane, supervisor_lanes};
pub use layout::CrashSlot;
pub use memfd::{HeaderSnapshot, Region};
pub use wait::SpinBudget;

use layout::{CRASH_WORKER_ID_BYTES, FRAME_HEADER};

/// Index of the supervisor -> host direction.
const TO_HOST: usize = 0;
/// Index of the host -> supervisor direction.
const FROM_HOST: usize = 1;

/// Sizes of a region. All are settings of the supervisor: `RING_BYTES`,
/// `RING_MAX_FRAME_BYTES`, `RING_LANES` and `RING_LANE_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Capacity of EACH direction in bytes, a power of two (default 8 MiB). Setting `RING_BYTES`.
    pub ring_bytes: usize,
    /// Largest frame accepted (default 4 MiB; at most `ring_bytes / 2`). Setting
    /// `RING_MAX_FRAME_BYTES`.
    pub max_frame: usize,
    /// Lanes of the region (default 16): one SPSC pair per worker thread, so a worker thread
    /// reads its `Process` frames and writes its results itself (docs/ring.md, "Lanes").
    /// 0 = none (every frame goes through the control rings). Setting `RING_LANES`.
    pub lanes: usize,
    /// Capacity of each direction of each lane, a power of two (default 64 KiB); frames over
    /// half of it take the control rings. Setting `RING_LANE_BYTES`.
    pub lane_bytes: usize,
}

/// Default of `RING_LANES`.
pub const DEFAULT_LANES: usize = 16;
/// Default of `RING_LANE_BYTES`.
pub const DEFAULT_LANE_BYTES: usize = 64 << 10;
/// Smallest lane accepted (one page).
pub const MIN_LANE_BYTES: usize = 4096;
/// Largest lane accepted (16 MiB per direction).
pub const MAX_LANE_BYTES: usize = 16 << 20;

/// Smallest ring accepted (one page).
pub const MIN_RING_BYTES: usize = 4096;
/// Largest ring accepted (1 GiB per direction).
pub const MAX_RING_BYTES: usize = 1 << 30;

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            ring_bytes: 8 << 20,
            max_frame: 4 << 20,
            lanes: DEFAULT_LANES,
            lane_bytes: DEFAULT_LANE_BYTES,
        }
    }
}

impl RingConfig {
    /// Checks the sizes: `ring_bytes` a power of two in [4 KiB, 1 GiB], `max_frame` in
    /// [1, ring_bytes / 2].
    pub fn validate(&self) -> Result<(), RingError> {
        let r = self.ring_bytes;
        if !r.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&r) {
            return Err(RingError::Config {
                reason: format!(
                    "RING_BYTES is {r}; it must be a power of two between {MIN_RING_BYTES} and \
                     {MAX_RING_BYTES}"
                ),
            });
        }
        if self.max_frame == 0 || self.max_frame > r / 2 {
            return Err(RingError::Config {
                reason: format!(
                    "RING_MAX_FRAME_BYTES is {}; it must be between 1 and RING_BYTES / 2 ({}): \
                     raise RING_BYTES or lower RING_MAX_FRAME_BYTES",
                    self.max_frame,
                    r / 2
                ),
            });
        }
        if self.lanes > layout::MAX_LANES {
            return Err(RingError::Config {
                reason: format!(
                    "RING_LANES is {}; it must be between 0 and {}",
                    self.lanes,
                    layout::MAX_LANES
                ),
            });
        }
        let l = self.lane_bytes;
        if self.lanes > 0
            && (!l.is_power_of_two() || !(MIN_LANE_BYTES..=MAX_LANE_BYTES).contains(&l))
        {
            return Err(RingError::Config {
                reason: format!(
                    "RING_LANE_BYTES is {l}; it must be a power of two between {MIN_LANE_BYTES} \
                     and {MAX_LANE_BYTES} (or set RING_LANES=0)"
                ),
            });
        }
        if self.region_bytes().is_none() {
            return Err(RingError::Config {
                reason: "RING_BYTES, RING_LANES and RING_LANE_BYTES make a region too large for \
                         this machine's address space; lower them"
                    .into(),
            });
        }
        Ok(())
    }

    /// Bytes of the whole region (`None` on overflow).
    pub fn region_bytes(&self) -> Option<usize> {
        let (lanes, lane_bytes) = if self.lanes == 0 {
            (0, 0)
        } else {
            (self.lanes, self.lane_bytes)
        };
        layout::region_bytes(self.ring_bytes, lanes, lane_bytes)
    }

    /// Largest frame a lane carries (half a lane, at most `max_frame`); larger frames take the
    /// control rings.
    pub fn lane_max_frame(&self) -> usize {
        (self.lane_bytes / 2).min(self.max_frame)
    }

    /// Ring bytes one frame of `len` payload bytes occupies (header and padding included).
    pub fn frame_cost(len: usize) -> usize {
        layout::align8(FRAME_HEADER + len)
    }
}

/// Errors of the ring transport.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The reader made no room within the send timeout.
    #[error(
        "ring is full: the peer did not read within the send timeout (it is stuck or too slow); \
         retry later or raise RING_BYTES"
    )]
    Full,
    /// The frame exceeds the configured limit.
    #[error(
        "frame of {len} bytes exceeds the ring's limit of {max} bytes; raise RING_MAX_FRAME_BYTES \
         (and RING_BYTES to at least twice that) or send less"
    )]
    TooLarge {
        /// Size of the refused frame.
        len: usize,
        /// The limit (`RING_MAX_FRAME_BYTES`).
        max: usize,
    },
    /// One side was marked closed (the peer died or shut down).
    #[error("the peer is gone: the ring was closed by one side (host died or shut down)")]
    PeerGone,
    /// The peer left inconsistent data in shared memory.
    #[error("ring is corrupt: {what}; the peer misbehaves and must be restarted")]
    Corrupt {
        /// What was found inconsistent.
        what: String,
    },
    /// Nothing arrived within the receive timeout.
    #[error("no frame arrived within the receive timeout")]
    Timeout,
    /// A system call failed.
    #[error("ring set-up failed at {step}")]
    Io {
        /// Which step failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The region was made by a different build.
    #[error(
        "ring region has layout version {layout} and protocol version {protocol}, this build \
         speaks {expected_layout}/{expected_protocol}; run a host-runner from the same build"
    )]
    Version {
        /// Layout version found.
        layout: u32,
        /// Protocol version found.
        protocol: u32,
        /// Layout version expected.
        expected_layout: u32,
        /// Protocol version expected.
        expected_protocol: u32,
    },
    /// A setting is out of range.
    #[error("invalid ring settings: {reason}")]
    Config {
        /// What is wrong and which setting fixes it.
        reason: String,
    },
    /// The fd does not hold a valid region.
    #[error("invalid ring region: {reason}")]
    BadRegion {
        /// What is wrong.
        reason: String,
    },
}

/// Which process a flag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Side {
    /// The workmanager daemon.
    Supervisor = 0,
    /// The host-runner child.
    Host = 1,
}

/// The host's lifecycle, as published by the host in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HostState {
    /// Mapped, not yet serving.
    Starting = 0,
    /// Sandbox in place, serving frames.
    Ready = 1,
    /// Finishing in-flight calls after `Shutdown`.
    Draining = 2,
    /// Done (or an unknown value was found).
    Exited = 3,
}

impl HostState {
    fn from_u32(v: u32) -> HostState {
        match v {
            0 => HostState::Starting,
            1 => HostState::Ready,
            2 => HostState::Draining,
            _ => HostState::Exited,
        }
    }
}

/// A crash report copied out of a [`CrashSlot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRecord {
    /// The fatal signal.
    pub signal: i32,
    /// Kernel thread id of the faulting thread.
    pub tid: i32,
    /// Worker whose call was running on that thread (lossy UTF-8, truncated to 88 bytes).
    pub worker_id: String,
    /// Message being processed (0 if none).
    pub msg_id: u64,
    /// `si_addr` of the fault.
    pub fault_addr: u64,
}

/// Marks a crash slot's `fault_addr` as carrying the number of a syscall that seccomp forbade
/// (SIGSYS with `si_code == SYS_SECCOMP`) rather than an address.
const SYSCALL_TAG: u64 = 0x5ec0_0000_0000_0000;

impl CrashRecord {
    /// The value a SIGSYS crash slot carries in `fault_addr` for forbidden syscall `nr`.
    pub const fn tag_syscall(nr: i32) -> u64 {
        SYSCALL_TAG | (nr as u32 as u64)
    }

    /// The syscall number seccomp forbade, for a SIGSYS raised by the filter.
    pub fn forbidden_syscall(&self) -> Option<i32> {
        (self.signal == libc::SIGSYS && self.fault_addr & 0xffff_ffff_0000_0000 == SYSCALL_TAG)
            .then_some((self.fault_addr & 0xffff_ffff) as u32 as i32)
    }

    /// The forbidden syscall's name, e.g. `socket` (or `syscall 1234` if unknown).
    pub fn forbidden_syscall_name(&self) -> Option<String> {
        self.forbidden_syscall().map(syscall_name)
    }
}

/// The name of syscall `nr` on this architecture, e.g. `socket`.
pub fn syscall_name(nr: i32) -> String {
    usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall {nr}"))
}

const SLOT_FREE: u32 = 0;
const SLOT_WRITING: u32 = 1;
const SLOT_DONE: u32 = 2;

impl CrashSlot {
    /// Claims this slot if free; returns false if already used. Async-signal-safe: one
    /// compare-exchange and relaxed atomic stores, no allocation, no locks.
    pub fn record(
        &self,
        signal: i32,
        tid: i32,
        worker_id: &[u8],
        msg_id: u64,
        fault_addr: u64,
    ) -> bool {
        if self
            .state
            .compare_exchange(SLOT_FREE, SLOT_WRITING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.signal.store(signal, Ordering::Relaxed);
        self.tid.store(tid, Ordering::Relaxed);
        self.msg_id.store(msg_id, Ordering::Relaxed);
        self.fault_addr.store(fault_addr, Ordering::Relaxed);
        let n = worker_id.len().min(CRASH_WORKER_ID_BYTES);
        for (dst, src) in self.worker_id.iter().zip(&worker_id[..n]) {
            dst.store(*src, Ordering::Relaxed);
        }
        self.worker_len.store(n as u32, Ordering::Relaxed);
        self.state.store(SLOT_DONE, Ordering::Release);
        true
    }

    /// Copies the record out; None if unclaimed or torn (the writer died half-way). The copy
    /// is validated (hostile memory): an out-of-range length reads as torn.
    pub fn read(&self) -> Option<CrashRecord> {
        if self.state.load(Ordering::Acquire) != SLOT_DONE {
            return None;
        }
        let n = self.worker_len.load(Ordering::Relaxed) as usize;
        if n > CRASH_WORKER_ID_BYTES {
            return None;
        }
        let id: Vec<u8> = self.worker_id[..n]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Some(CrashRecord {
            signal: self.signal.load(Ordering::Relaxed),
            tid: self.tid.load(Ordering::Relaxed),
            worker_id: String::from_utf8_lossy(&id).into_owned(),
            msg_id: self.msg_id.load(Ordering::Relaxed),
            fault_addr: self.fault_addr.load(Ordering::Relaxed),
        })
    }

    /// Frees the slot for reuse (the supervisor, after reading it, when a region is reused).
    pub fn clear(&self) {
        self.state.store(SLOT_FREE, Ordering::Release);
    }
}

/// Sending end of one direction. Each send is serialised internally (a Mutex), so many threads
/// may share one sender (clones share the same ring and lock).
#[derive(Debug, Clone)]
pub struct FrameSender {
    region: Arc<Region>,
    writer: Arc<Mutex<spsc::Writer>>,
}

/// Receiving end of one direction; a single owner.
#[derive(Debug)]
pub struct FrameReceiver {
    region: Arc<Region>,
    reader: spsc::Reader,
}

/// Supervisor's ends: (to-host sender, from-host receiver). Call once per region: a second pair
/// would break the single-producer single-consumer rule.
pub fn supervisor_channels(r: Arc<Region>) -> (FrameSender, FrameReceiver) {
    channels(r, TO_HOST, FROM_HOST)
}

/// Host's ends: (from-host sender, to-host receiver). Call once per region.
pub fn host_channels(r: Arc<Region>) -> (FrameSender, FrameReceiver) {
    channels(r, FROM_HOST, TO_HOST)
}

fn channels(r: Arc<Region>, tx: usize, rx: usize) -> (FrameSender, FrameReceiver) {
    let writer = spsc::Writer::new(&r, tx);
    let reader = spsc::Reader::new(&r, rx);
    (
        FrameSender {
            region: r.clone(),
            writer: Arc::new(Mutex::new(writer)),
        },
        FrameReceiver { region: r, reader },
    )
}

impl FrameSender {
    /// Copies `frame` into the ring. Blocks while the ring is full (backpressure), up to
    /// `timeout`, then RingError::Full. A frame over max_frame is RingError::TooLarge naming the
    /// limit and the setting that raises it. PeerGone if either side is closed.
    pub fn send(&self, frame: &[u8], timeout: Duration) -> Result<(), RingError> {
        // A panic while holding the lock cannot leave the writer inconsistent (the tail is only
        // advanced after a complete copy), so a poisoned lock is still usable.
        let mut w = self.writer.locked();
        w.send(&self.region, frame, timeout)
    }

    /// Copies several frames into the ring and publishes them together: one `tail` store and
    /// at most one wake-up of the reader for the whole batch (when it all fits; otherwise each
    /// part is published before waiting for room). Errors as [`FrameSender::send`]; a frame
    /// over the limit fails the batch before anything is written.
    pub fn send_batch<F: AsRef<[u8]>>(
        &self,
        frames: &[F],
        timeout: Duration,
    ) -> Result<(), RingError> {
        let mut w = self.writer.locked();
        w.send_batch(&self.region, frames, timeout)
    }

    /// Checks the peer's reader index of this ring without sending (a sender that is busy
    /// right now is skipped: it checks by itself). `Corrupt` if the peer scribbled it. The
    /// supervisor's link runs this on the control ring whenever a frame arrives, because with
    /// lanes it may not write into the control ring for a long time.
    pub fn check_peer(&self) -> Result<(), RingError> {
        match self.writer.try_locked() {
            Some(w) => w.check_reader(&self.region),
            None => Ok(()),
        }
    }

    /// The region this sender writes into.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Fault injection for tests only: writes `bytes` raw at the write position and publishes
    /// `publish` bytes (possibly a lie). Never use outside tests; it bypasses framing.
    #[doc(hidden)]
    pub fn inject_raw_for_tests(&self, bytes: &[u8], publish: u64) {
        let mut w = self.writer.locked();
        spsc::write_raw(&mut w, &self.region, bytes, publish);
    }
}

impl FrameReceiver {
    /// Waits for the next frame (spin while work is in flight, then futex sleep; None = forever)
    /// and copies it out of shared memory into `buf` (cleared first). Lengths are bounds-checked
    /// against the region: a corrupt length is RingError::Corrupt, never UB or a panic. Frames
    /// published before a side was closed are still delivered; then PeerGone.
    pub fn recv(&mut self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<(), RingError> {
        self.reader.recv(&self.region, buf, timeout)
    }

    /// Takes the next frame without waiting; Ok(false) if none is published yet.
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<bool, RingError> {
        // Closed flag first, then the tail (see `ring::loom`): if we see the close we also see
        // every frame published before it.
        let closed = self.region.any_closed();
        match self.reader.poll(&self.region, buf)? {
            spsc::Polled::Frame => Ok(true),
            spsc::Polled::Empty if closed => Err(RingError::PeerGone),
            spsc::Polled::Empty => Ok(false),
        }
    }

    /// As [`FrameReceiver::recv`], but also returns `Ok(false)` (nothing read) as soon as
    /// `woken()` is true. Whoever makes it true calls [`ReaderNudge::nudge`] afterwards, so a
    /// receiver asleep on the futex wakes up to look. A host's lane thread waits like this for
    /// its lane and its worker's queue at once.
    pub fn recv_or(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
        woken: &dyn Fn() -> bool,
    ) -> Result<bool, RingError> {
        self.reader.recv_or(&self.region, buf, timeout, woken)
    }

    /// A handle that wakes this receiver when it sleeps (see [`FrameReceiver::recv_or`]).
    pub fn nudger(&self) -> ReaderNudge {
        ReaderNudge::new(self.region.clone(), self.reader.dir)
    }

    /// Replaces the adaptive spin budget (for example `SpinBudget::new(ZERO, ZERO)` to never
    /// spin, or a fixed budget for benchmarks).
    pub fn set_spin(&mut self, spin: SpinBudget) {
        self.reader.spin = spin;
    }

    /// How long a wait without a timeout sleeps before it looks at the ring again (100 ms by
    /// default). A reader that is always woken by its writers and nudgers (a host's lane
    /// thread) can sleep longer, so an idle host does not wake ten times a second per lane.
    pub fn set_nap(&mut self, nap: Duration) {
        self.reader.nap = nap.max(Duration::from_millis(1));
    }

    /// The current spin budget (it adapts with every wait).
    pub fn spin(&self) -> SpinBudget {
        self.reader.spin
    }

    /// The region this receiver reads from.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lanes_tests;
