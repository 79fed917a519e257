//! The `#[repr(C)]` layout of a ring region, shared by two processes of the same build.
//!
//! ```text
//! offset 0      Header            (64 bytes: magic, versions, sizes, host state, closed flags)
//! offset 64     CrashSlot x 4     (128 bytes each)
//! offset 1024   RingCtl to-host   (128 bytes: writer line, reader line)
//! offset 1152   RingCtl from-host (128 bytes)
//! offset 1280   Doorbell          (64 bytes: the supervisor's one futex for every from-host ring)
//! offset 4096   to-host data      (ring_bytes)
//! offset 4096 + ring_bytes   from-host data (ring_bytes)
//! lanes (layout version 2, only when the header's `lanes` > 0), from L = 4096 + 2 * ring_bytes:
//! L             RingCtl x 2 per lane (lane k: to-host at L + 256 k, from-host at L + 256 k + 128),
//!               rounded up to a page
//! L + ctl       lane data: lane k to-host, lane k from-host, ... (lane_bytes each)
//! ```
//!
//! A region without lanes is byte for byte a layout-version-1 region (the lane fields sit in
//! what version 1 reserved as zero) and is written as version 1, so hosts of either build map it.
//!
//! **Invariant:** every field the other process may write is an atomic, so neither side ever
//! holds a plain reference to memory that changes under it. Sizes read back from the header are
//! only used to validate a mapping; each side then works from its own validated copies.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64};

/// `b"WMRING\0\x01"` as a little-endian u64: identifies a workmanager ring region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"WMRING\0\x01");
/// Bumped whenever anything in this file changes shape. Version 2 added the lanes.
pub const LAYOUT_VERSION: u32 = 2;
/// The layout version of a region without lanes (identical to version 1).
pub const LAYOUT_VERSION_NO_LANES: u32 = 1;
/// Bumped whenever `schemas/host_protocol.fbs` changes incompatibly; checked at map time.
pub const PROTOCOL_VERSION: u32 = 1;
/// How many crash slots a region has (one per faulting thread that manages to report).
pub const CRASH_SLOTS: usize = 4;
/// Bytes of a worker id kept in a crash slot (longer ids are truncated).
pub const CRASH_WORKER_ID_BYTES: usize = 88;

/// Byte offset of the crash slots.
pub const CRASH_OFFSET: usize = 64;
/// Byte offset of the two ring control blocks (to-host first).
pub const CTL_OFFSET: usize = 1024;
/// Byte offset of the doorbell (after the two control blocks).
pub const DOORBELL_OFFSET: usize = CTL_OFFSET + 2 * size_of::<RingCtl>();
/// Byte offset of the first ring's data; the second follows after `ring_bytes`.
pub const DATA_OFFSET: usize = 4096;
/// Most lanes a region may have.
pub const MAX_LANES: usize = 256;
/// Bytes of one lane's two control blocks.
pub const LANE_CTL_BYTES: usize = 2 * size_of::<RingCtl>();

/// `Doorbell::waiting` bit: the reader sleeps on the futex `Doorbell::seq`.
pub const BELL_FUTEX: u32 = 1;
/// `Doorbell::waiting` bit: the reader awaits the region's doorbell eventfd.
pub const BELL_EVENTFD: u32 = 2;

/// Frame header kind: a frame of `len` payload bytes follows.
pub const KIND_FRAME: u32 = 0x574D_0001;
/// Frame header kind: nothing more fits before the end of the ring; continue at offset 0.
pub const KIND_SKIP: u32 = 0x574D_0002;
/// Bytes of the per-frame header (`len: u32`, `kind: u32`, stored as one u64).
pub const FRAME_HEADER: usize = 8;

/// The region header. Written by the supervisor before the host exists; the host reads it once
/// at map time. Host state and the closed flags change later (atomics).
#[repr(C, align(64))]
pub struct Header {
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    pub protocol_version: AtomicU32,
    pub ring_bytes: AtomicU64,
    pub max_frame: AtomicU64,
    pub total_bytes: AtomicU64,
    pub crash_slots: AtomicU32,
    /// A `HostState` as u32.
    pub host_state: AtomicU32,
    /// `closed[Side::Supervisor as usize]`, `closed[Side::Host as usize]`: non-zero once gone.
    pub closed: [AtomicU32; 2],
    /// Lanes (SPSC pairs of their own, one per worker thread); 0 in a version-1 region.
    pub lanes: AtomicU32,
    /// Bytes of each direction of each lane (a power of two); 0 without lanes.
    pub lane_bytes: AtomicU32,
}

/// The supervisor's single doorbell for all from-host rings: its reader sets `waiting` before
/// it sleeps, and every host writer, after publishing, wakes it when set (the same Dekker pair
/// as a ring's `reader_waiting`/`data_seq`). `waiting` says how the reader sleeps:
/// [`BELL_FUTEX`] on `seq` (the blocking `MultiReceiver`), [`BELL_EVENTFD`] on the region's
/// eventfd (the supervisor's async reader on its tokio runtime).
#[repr(C, align(64))]
pub struct Doorbell {
    pub waiting: AtomicU32,
    pub seq: AtomicU32,
    pub _pad: [u8; 56],
}

/// One direction's indices and futex words. Positions are byte counters that only grow (mod
/// 2^64); the offset in the data array is `pos & (ring_bytes - 1)`.
#[repr(C, align(64))]
pub struct RingCtl {
    /// Writer's line. Bytes published so far.
    pub tail: AtomicU64,
    /// Non-zero while the writer is (about to be) asleep on `space_seq` waiting for room.
    pub writer_waiting: AtomicU32,
    /// Futex word the writer sleeps on; the reader bumps it after freeing room.
    pub space_seq: AtomicU32,
    pub _pad_w: [u8; 48],
    /// Reader's line. Bytes consumed so far.
    pub head: AtomicU64,
    /// Non-zero while the reader is (about to be) asleep on `data_seq`.
    pub reader_waiting: AtomicU32,
    /// Futex word the reader sleeps on; the writer bumps it after publishing.
    pub data_seq: AtomicU32,
    pub _pad_r: [u8; 48],
}

/// A crash report slot. The host's signal handler claims one with a compare-exchange and fills
/// it with relaxed atomic stores (async-signal-safe); the supervisor reads it after the child died.
#[repr(C, align(64))]
pub struct CrashSlot {
    /// 0 = free, 1 = being written (a reader sees it as torn), 2 = complete.
    pub(crate) state: AtomicU32,
    pub(crate) signal: AtomicI32,
    pub(crate) tid: AtomicI32,
    pub(crate) worker_len: AtomicU32,
    pub(crate) msg_id: AtomicU64,
    pub(crate) fault_addr: AtomicU64,
    pub(crate) worker_id: [AtomicU8; CRASH_WORKER_ID_BYTES],
}

const _: () = {
    assert!(size_of::<Header>() == 64);
    assert!(std::mem::offset_of!(Header, magic) == 0);
    assert!(std::mem::offset_of!(Header, layout_version) == 8);
    assert!(std::mem::offset_of!(Header, protocol_version) == 12);
    assert!(std::mem::offset_of!(Header, ring_bytes) == 16);
    assert!(std::mem::offset_of!(Header, max_frame) == 24);
    assert!(std::mem::offset_of!(Header, total_bytes) == 32);
    assert!(std::mem::offset_of!(Header, crash_slots) == 40);
    assert!(std::mem::offset_of!(Header, host_state) == 44);
    assert!(std::mem::offset_of!(Header, closed) == 48);
    assert!(std::mem::offset_of!(Header, lanes) == 56);
    assert!(std::mem::offset_of!(Header, lane_bytes) == 60);
    assert!(size_of::<Doorbell>() == 64);
    assert!(DOORBELL_OFFSET + size_of::<Doorbell>() <= DATA_OFFSET);
    assert!(size_of::<CrashSlot>() == 128);
    assert!(std::mem::offset_of!(CrashSlot, worker_id) == 32);
    assert!(size_of::<RingCtl>() == 128);
    assert!(std::mem::offset_of!(RingCtl, tail) == 0);
    assert!(std::mem::offset_of!(RingCtl, head) == 64);
    assert!(std::mem::offset_of!(RingCtl, data_seq) == 76);
    assert!(CRASH_OFFSET + CRASH_SLOTS * size_of::<CrashSlot>() <= CTL_OFFSET);
    assert!(CTL_OFFSET + 2 * size_of::<RingCtl>() <= DATA_OFFSET);
    assert!(DATA_OFFSET.is_multiple_of(4096));
};

/// Rounds `n` up to a multiple of 8 (frames are 8-byte aligned). Saturates instead of wrapping.
pub const fn align8(n: usize) -> usize {
    n.saturating_add(7) & !7
}

/// Byte offset of the lane area (right after the two main rings).
pub const fn lanes_offset(ring_bytes: usize) -> usize {
    DATA_OFFSET + 2 * ring_bytes
}

/// Bytes of the lane control blocks, rounded up to a page (the lane data stays page-aligned).
pub const fn lane_ctl_area(lanes: usize) -> usize {
    (lanes * LANE_CTL_BYTES).div_ceil(4096) * 4096
}

/// Total bytes of a region whose rings are `ring_bytes` each, with `lanes` lanes of
/// `lane_bytes` per direction; `None` on overflow. Callers validate the sizes first.
pub const fn region_bytes(ring_bytes: usize, lanes: usize, lane_bytes: usize) -> Option<usize> {
    let main = DATA_OFFSET + 2 * ring_bytes;
    if lanes == 0 {
        return Some(main);
    }
    match (2 * lanes).checked_mul(lane_bytes) {
        Some(data) => match (main + lane_ctl_area(lanes)).checked_add(data) {
            Some(t) => Some(t),
            None => None,
        },
        None => None,
    }
}
