//! The `#[repr(C)]` layout of a ring region, shared by two processes of the same build.
//!
//! ```text
//! offset 0      Header            (64 bytes: magic, versions, sizes, host state, closed flags)
//! offset 64     CrashSlot x 4     (128 bytes each)
//! offset 1024   RingCtl to-host   (128 bytes: writer line, reader line)
//! offset 1152   RingCtl from-host (128 bytes)
//! offset 4096   to-host data      (ring_bytes)
//! offset 4096 + ring_bytes   from-host data (ring_bytes)
//! ```
//!
//! **Invariant:** every field the other process may write is an atomic, so neither side ever
//! holds a plain reference to memory that changes under it. Sizes read back from the header are
//! only used to validate a mapping; each side then works from its own validated copies.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64};

/// `b"WMRING\0\x01"` as a little-endian u64: identifies a workmanager ring region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"WMRING\0\x01");
/// Bumped whenever anything in this file changes shape.
pub const LAYOUT_VERSION: u32 = 1;
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
/// Byte offset of the first ring's data; the second follows after `ring_bytes`.
pub const DATA_OFFSET: usize = 4096;

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
    pub _reserved: [u8; 8],
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

/// Total bytes of a region whose rings are `ring_bytes` each.
pub const fn region_bytes(ring_bytes: usize) -> usize {
    DATA_OFFSET + 2 * ring_bytes
}
