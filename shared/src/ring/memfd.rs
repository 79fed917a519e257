//! The region: one `memfd_create` file mapped `MAP_SHARED` by the supervisor and its host.
//!
//! A memfd has no name in any file system, so nothing is left behind when either side is
//! SIGKILLed (the `shared_memory` crate leaves `/dev/shm/<id>` behind; see docs/ring.md).

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::layout::{
    CRASH_OFFSET, CRASH_SLOTS, CTL_OFFSET, CrashSlot, DATA_OFFSET, DOORBELL_OFFSET, Doorbell,
    Header, LAYOUT_VERSION, LAYOUT_VERSION_NO_LANES, MAGIC, PROTOCOL_VERSION, RingCtl,
    lane_ctl_area, lanes_offset,
};
use super::wait::futex_wake;
use super::{HostState, RingConfig, RingError, Side};

/// One mapped memfd: header (magic, layout version, protocol version, sizes, host state, peer
/// flags), crash slots, and two SPSC byte rings (to-host, from-host). Send + Sync.
///
/// **Invariant:** `base` points at a live `MAP_SHARED` mapping of `len` bytes for the life of the
/// value, `len == cfg.region_bytes()`, and `cfg` is this side's own validated copy of the sizes
/// (never re-read from the shared header, which the peer could change).
///
/// Rings are numbered: 0 = control to-host, 1 = control from-host, `2 + 2k` = lane k to-host,
/// `3 + 2k` = lane k from-host (so `ring & 1` is the direction).
pub struct Region {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    cfg: RingConfig,
    /// The doorbell eventfd (docs/ring.md, "The runtime reads its lanes"): made by the
    /// supervisor beside the memfd and inherited by the host like it; host writers signal it
    /// (instead of the doorbell futex) when the supervisor's async reader announced it sleeps.
    /// `None` on a host started without `--bell-fd` (tests and benches that read with the
    /// blocking `MultiReceiver`).
    bell: Option<OwnedFd>,
}

// SAFETY: everything reachable through `base` is accessed through atomics or raw-pointer copies
// that tolerate concurrent writers (the peer process can write at any time anyway), and the
// mapping is not tied to the creating thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only hands out `&` to atomics and raw pointers.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("ring_bytes", &self.cfg.ring_bytes)
            .field("max_frame", &self.cfg.max_frame)
            .field("lanes", &self.cfg.lanes)
            .finish()
    }
}

fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, RingError> {
    let nz = NonZeroUsize::new(len).ok_or_else(|| RingError::BadRegion {
        reason: "region size is zero".into(),
    })?;
    // SAFETY: a fresh mapping chosen by the kernel (addr None) cannot alias any Rust object; the
    // fd is open for the duration of the call. Accesses within `len` cannot fault with SIGBUS
    // only because the file can no longer shrink: `Region::create` seals it with F_SEAL_SHRINK
    // before any host sees it, and `Region::open` refuses a memfd without that seal. (Without
    // the seal, a host calling ftruncate on its fd 3 would make the supervisor's next access
    // to a page past the new end raise SIGBUS and kill the daemon.) The mapping is unmapped
    // only in Drop.
    let p = unsafe {
        mmap(
            None,
            nz,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }
    .map_err(|e| RingError::Io {
        step: "mmap the ring region",
        source: e.into(),
    })?;
    Ok(p.cast())
}

/// A fresh doorbell eventfd: non-blocking (the supervisor's reader awaits it with tokio, the
/// host's writers must never block on it) and close-on-exec (the spawner `dup2`s it into the
/// child on purpose).
fn new_bell() -> Result<OwnedFd, RingError> {
    // SAFETY: eventfd takes two integers and returns a new fd or -1; no memory is involved.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(RingError::Io {
            step: "eventfd for the ring's doorbell",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by eventfd, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The seals every ring memfd carries before a host can see it: its size is fixed for good.
pub const RING_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

fn seal(fd: &OwnedFd) -> Result<(), RingError> {
    // SAFETY: fcntl(F_ADD_SEALS) takes an fd we own and an integer; it touches no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, RING_SEALS) };
    if rc < 0 {
        return Err(RingError::Io {
            step: "seal the ring memfd (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)",
            source: std::io::Error::last_os_error(),
        });
    }
    check_sealed(fd)
}

/// The seals on `fd` must include `RING_SEALS`: a region that could still shrink is refused.
fn check_sealed(fd: &OwnedFd) -> Result<(), RingError> {
    // SAFETY: fcntl(F_GET_SEALS) takes an fd we own; it touches no memory of ours.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if got < 0 {
        return Err(RingError::BadRegion {
            reason: format!(
                "cannot read the ring memfd's seals: {}; the ring must be a sealed memfd",
                std::io::Error::last_os_error()
            ),
        });
    }
    if got & RING_SEALS != RING_SEALS {
        return Err(RingError::BadRegion {
            reason: format!(
                "the ring memfd carries seals {got:#x}, not {RING_SEALS:#x} \
                 (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); its size could change under the mapping"
            ),
        });
    }
    Ok(())
}

/// See [`Region::header_snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSnapshot {
    pub magic_ok: bool,
    pub ring_bytes: u64,
    pub max_frame: u64,
    /// The supervisor's closed flag, which only the supervisor sets (and only on shutdown).
    pub supervisor_closed: bool,
    /// Whether every ring's (lanes included) reader and writer indices are consistent.
    pub indices_ok: bool,
    /// The lane count and lane size the header claims now.
    pub lanes: u32,
    pub lane_bytes: u32,
}

impl Region {
    /// Supervisor: `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` + `ftruncate` +
    /// seals (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) + `mmap(MAP_SHARED)` + header.
    ///
    /// The seals are what make the supervisor's mapping safe from its host: the memfd is
    /// shared with hostile code, and a file that shrinks under a mapping turns every access
    /// past the new end into SIGBUS in *every* process that maps it.
    pub fn create(name: &str, cfg: &RingConfig) -> Result<Region, RingError> {
        cfg.validate()?;
        let mut cfg = *cfg;
        if cfg.lanes == 0 {
            cfg.lane_bytes = 0;
        }
        let len = cfg.region_bytes().ok_or_else(|| RingError::Config {
            reason: "the region would be too large".into(),
        })?;
        let cname =
            std::ffi::CString::new(name.replace('\0', "_")).map_err(|_| RingError::Config {
                reason: "region name contains a NUL byte".into(),
            })?;
        let fd = memfd_create(
            cname.as_c_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| RingError::Io {
            step: "memfd_create",
            source: e.into(),
        })?;
        let len_off = i64::try_from(len).map_err(|_| RingError::Config {
            reason: format!("region of {len} bytes is too large"),
        })?;
        nix::unistd::ftruncate(&fd, len_off).map_err(|e| RingError::Io {
            step: "ftruncate the ring memfd",
            source: e.into(),
        })?;
        seal(&fd)?;
        let base = map(&fd, len)?;
        let bell = Some(new_bell()?);
        let r = Region {
            fd,
            base,
            len,
            cfg,
            bell,
        };
        // A new memfd is zero-filled: indices, flags, futex words and crash slots start at 0.
        let h = r.header();
        // Without lanes the region is a version-1 region, which older hosts map too.
        h.layout_version
            .store(r.layout_version(), Ordering::Relaxed);
        h.lanes.store(cfg.lanes as u32, Ordering::Relaxed);
        h.lane_bytes.store(cfg.lane_bytes as u32, Ordering::Relaxed);
        h.protocol_version
            .store(PROTOCOL_VERSION, Ordering::Relaxed);
        h.ring_bytes.store(cfg.ring_bytes as u64, Ordering::Relaxed);
        h.max_frame.store(cfg.max_frame as u64, Ordering::Relaxed);
        h.total_bytes.store(len as u64, Ordering::Relaxed);
        h.crash_slots.store(CRASH_SLOTS as u32, Ordering::Relaxed);
        h.host_state
            .store(HostState::Starting as u32, Ordering::Relaxed);
        // Magic last, with Release: a mapper that sees it sees the rest.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(r)
    }

    /// The memfd, to hand to the child (the spawner `dup2()`s it to fd 3 and clears CLOEXEC).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The doorbell eventfd, to hand to the child beside the memfd (`--bell-fd`); `None` on
    /// a host side opened without one.
    pub fn bell_fd(&self) -> Option<BorrowedFd<'_>> {
        self.bell.as_ref().map(|b| b.as_fd())
    }

    /// Host: maps an inherited memfd; checks magic, versions and sizes against the fd's size.
    /// Without a doorbell eventfd: the host's writers only wake a reader sleeping on the
    /// doorbell futex (the blocking `MultiReceiver`).
    pub fn open(fd: OwnedFd) -> Result<Region, RingError> {
        Region::open_with_bell(fd, None)
    }

    /// Host: [`Region::open`], plus the supervisor's doorbell eventfd (inherited like the
    /// memfd), which the host's writers signal when the supervisor's async reader sleeps.
    pub fn open_with_bell(fd: OwnedFd, bell: Option<OwnedFd>) -> Result<Region, RingError> {
        let st = nix::sys::stat::fstat(&fd).map_err(|e| RingError::Io {
            step: "fstat the ring fd",
            source: e.into(),
        })?;
        let file_len = usize::try_from(st.st_size).map_err(|_| RingError::BadRegion {
            reason: format!("ring fd has a negative size {}", st.st_size),
        })?;
        check_sealed(&fd)?;
        if file_len < DATA_OFFSET {
            return Err(RingError::BadRegion {
                reason: format!(
                    "ring fd is {file_len} bytes, smaller than the {DATA_OFFSET}-byte header; \
                     is fd 3 really the ring memfd?"
                ),
            });
        }
        // Map the header page alone first so a lying header cannot make us map past the file.
        let head_base = map(&fd, DATA_OFFSET)?;
        let (magic, layout, proto, ring_bytes, max_frame, total, lanes, lane_bytes) = {
            // SAFETY: `head_base` maps DATA_OFFSET >= size_of::<Header>() bytes, page-aligned,
            // so it is a valid, aligned Header made only of atomics (any bit pattern is valid).
            let h = unsafe { &*head_base.as_ptr().cast::<Header>() };
            (
                h.magic.load(Ordering::Acquire),
                h.layout_version.load(Ordering::Relaxed),
                h.protocol_version.load(Ordering::Relaxed),
                h.ring_bytes.load(Ordering::Relaxed),
                h.max_frame.load(Ordering::Relaxed),
                h.total_bytes.load(Ordering::Relaxed),
                h.lanes.load(Ordering::Relaxed),
                h.lane_bytes.load(Ordering::Relaxed),
            )
        };
        // SAFETY: `head_base` is the DATA_OFFSET-byte mapping made above; the `h` borrow ended.
        let _ = unsafe { munmap(head_base.cast(), DATA_OFFSET) };
        if magic != MAGIC {
            return Err(RingError::BadRegion {
                reason: format!("bad magic {magic:#018x}; fd is not a workmanager ring"),
            });
        }
        let layout_ok = layout == LAYOUT_VERSION
            || (layout == LAYOUT_VERSION_NO_LANES && lanes == 0 && lane_bytes == 0);
        if !layout_ok || proto != PROTOCOL_VERSION {
            return Err(RingError::Version {
                layout,
                protocol: proto,
                expected_layout: LAYOUT_VERSION,
                expected_protocol: PROTOCOL_VERSION,
            });
        }
        let cfg = RingConfig {
            ring_bytes: usize::try_from(ring_bytes).unwrap_or(usize::MAX),
            max_frame: usize::try_from(max_frame).unwrap_or(usize::MAX),
            lanes: lanes as usize,
            lane_bytes: lane_bytes as usize,
        };
        cfg.validate().map_err(|e| RingError::BadRegion {
            reason: format!("header sizes are invalid: {e}"),
        })?;
        let len = cfg.region_bytes().ok_or_else(|| RingError::BadRegion {
            reason: "header sizes overflow".into(),
        })?;
        if total != len as u64 || file_len != len {
            return Err(RingError::BadRegion {
                reason: format!(
                    "header says {total} bytes for rings of {ring_bytes} and {lanes} lanes of \
                     {lane_bytes}, expected {len}; the fd is {file_len} bytes"
                ),
            });
        }
        let base = map(&fd, len)?;
        Ok(Region {
            fd,
            base,
            len,
            cfg,
            bell,
        })
    }

    /// The sizes this region was created (or validated) with.
    pub fn config(&self) -> RingConfig {
        self.cfg
    }

    /// The layout version this region was written with (1 without lanes).
    fn layout_version(&self) -> u32 {
        if self.cfg.lanes == 0 {
            LAYOUT_VERSION_NO_LANES
        } else {
            LAYOUT_VERSION
        }
    }

    /// Lanes of this region (0: only the control rings).
    pub fn lanes(&self) -> usize {
        self.cfg.lanes
    }

    /// How many rings the region has (2 control rings + 2 per lane).
    pub(crate) fn rings(&self) -> usize {
        2 + 2 * self.cfg.lanes
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is live and at least DATA_OFFSET bytes (invariant); offset 0 of a
        // page-aligned mapping is aligned for Header, which is made of atomics only.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// The control block of ring `ring` (see the numbering on [`Region`]). An out-of-range
    /// number is a bug of this crate; it is clamped to a control ring rather than read past
    /// the lanes.
    pub(crate) fn ctl(&self, ring: usize) -> &RingCtl {
        debug_assert!(ring < self.rings());
        let ring = if ring < self.rings() { ring } else { ring & 1 };
        let off = if ring < 2 {
            CTL_OFFSET + ring * size_of::<RingCtl>()
        } else {
            lanes_offset(self.cfg.ring_bytes) + (ring - 2) * size_of::<RingCtl>()
        };
        // SAFETY: control rings: CTL_OFFSET + 2 * 128 <= DATA_OFFSET <= len (const asserts in
        // layout.rs). Lane rings (ring < rings(), so lanes > 0): the lane control area starts at
        // lanes_offset (page-aligned) and holds LANE_CTL_BYTES per lane, inside len by
        // region_bytes. Both offsets are multiples of RingCtl's 64-byte alignment; atomics only.
        unsafe { &*self.base.as_ptr().add(off).cast::<RingCtl>() }
    }

    /// Start of ring `ring`'s data array ([`Region::cap`] bytes long).
    pub(crate) fn data(&self, ring: usize) -> *mut u8 {
        debug_assert!(ring < self.rings());
        let ring = if ring < self.rings() { ring } else { ring & 1 };
        let off = if ring < 2 {
            DATA_OFFSET + ring * self.cfg.ring_bytes
        } else {
            lanes_offset(self.cfg.ring_bytes)
                + lane_ctl_area(self.cfg.lanes)
                + (ring - 2) * self.cfg.lane_bytes
        };
        // SAFETY: off + cap(ring) <= len by region_bytes (control rings: DATA_OFFSET + 2 *
        // ring_bytes; lane ring r: lane data start + (r - 2 + 1) * lane_bytes, r - 2 < 2 * lanes).
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Capacity of ring `ring` in bytes.
    pub(crate) fn cap(&self, ring: usize) -> usize {
        if ring < 2 {
            self.cfg.ring_bytes
        } else {
            self.cfg.lane_bytes
        }
    }

    /// Largest frame ring `ring` carries.
    pub(crate) fn frame_limit(&self, ring: usize) -> usize {
        if ring < 2 {
            self.cfg.max_frame
        } else {
            self.cfg.lane_max_frame()
        }
    }

    /// The supervisor's doorbell for every from-host ring.
    pub(crate) fn doorbell(&self) -> &Doorbell {
        // SAFETY: DOORBELL_OFFSET + 64 <= DATA_OFFSET <= len (const asserts), 64-aligned,
        // atomics only.
        unsafe { &*self.base.as_ptr().add(DOORBELL_OFFSET).cast::<Doorbell>() }
    }

    /// Wakes whoever sleeps reading ring `ring` (when it announced it sleeps) without
    /// publishing anything: the host's frame loop uses it on a lane after it queued work the
    /// lane's worker thread must see too (a frame too large for the lane, or an unload).
    pub(crate) fn nudge_reader(&self, ring: usize) {
        let ctl = self.ctl(ring);
        std::sync::atomic::fence(Ordering::SeqCst);
        if ctl.reader_waiting.load(Ordering::Relaxed) != 0 {
            ctl.data_seq.fetch_add(1, Ordering::Release);
            futex_wake(&ctl.data_seq, i32::MAX);
        }
    }

    /// The header fields a host could rewrite, read once (for naming a violation after the
    /// host died; nothing here is trusted).
    pub fn header_snapshot(&self) -> HeaderSnapshot {
        let h = self.header();
        HeaderSnapshot {
            magic_ok: h.magic.load(Ordering::Acquire) == MAGIC
                && h.layout_version.load(Ordering::Relaxed) == self.layout_version()
                && h.protocol_version.load(Ordering::Relaxed) == PROTOCOL_VERSION,
            ring_bytes: h.ring_bytes.load(Ordering::Relaxed),
            max_frame: h.max_frame.load(Ordering::Relaxed),
            supervisor_closed: h.closed[Side::Supervisor as usize].load(Ordering::Acquire) != 0,
            lanes: h.lanes.load(Ordering::Relaxed),
            lane_bytes: h.lane_bytes.load(Ordering::Relaxed),
            indices_ok: (0..self.rings()).all(|ring| {
                let c = self.ctl(ring);
                let (head, tail) = (
                    c.head.load(Ordering::Acquire),
                    c.tail.load(Ordering::Acquire),
                );
                tail.wrapping_sub(head) <= self.cap(ring) as u64
                    && head.is_multiple_of(8)
                    && tail.is_multiple_of(8)
            }),
        }
    }

    /// The host's lifecycle state as last set by the host (an unknown value reads as `Exited`).
    pub fn host_state(&self) -> HostState {
        HostState::from_u32(self.header().host_state.load(Ordering::Acquire))
    }

    /// Sets the host's lifecycle state.
    pub fn set_host_state(&self, s: HostState) {
        self.header().host_state.store(s as u32, Ordering::Release);
    }

    /// Whether `side` has been marked closed.
    pub fn is_closed(&self, side: Side) -> bool {
        self.header().closed[side as usize].load(Ordering::Acquire) != 0
    }

    /// Whether either side has been marked closed (channels then fail with `PeerGone`).
    pub fn any_closed(&self) -> bool {
        let h = self.header();
        h.closed[0].load(Ordering::SeqCst) != 0 || h.closed[1].load(Ordering::SeqCst) != 0
    }

    /// Marks this side gone (or the peer, when the supervisor learns the child died) and wakes
    /// every waiter on both rings; later send/recv on either side fail with PeerGone (a receiver
    /// first drains frames that were completely published before).
    pub fn mark_closed(&self, side: Side) {
        self.header().closed[side as usize].store(1, Ordering::SeqCst);
        for ring in 0..self.rings() {
            let c = self.ctl(ring);
            c.data_seq.fetch_add(1, Ordering::SeqCst);
            c.space_seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(&c.data_seq, i32::MAX);
            futex_wake(&c.space_seq, i32::MAX);
        }
        let d = self.doorbell();
        d.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&d.seq, i32::MAX);
        // The async reader sleeps on the eventfd instead: it must see the close too (the
        // supervisor's own `peer_died` is how it learns that a host is gone).
        self.ring_bell();
    }

    /// Signals the doorbell eventfd (if this side has one): adds 1 to its counter, which makes
    /// it readable for the supervisor's async reader. One `write`, never blocks (the eventfd
    /// is non-blocking; a counter at its maximum is already readable, so `EAGAIN` loses
    /// nothing). Errors are ignored: on the host, a closed or replaced fd 4 is the host's own
    /// loss (its frames wait for the next signal or its calls' deadlines).
    pub(crate) fn ring_bell(&self) {
        if let Some(bell) = &self.bell {
            let one = 1u64.to_ne_bytes();
            // SAFETY: write(2) reads 8 bytes from `one`, a live local; the fd is owned by this
            // Region (it may refer to something else if a hostile plugin replaced it, which
            // only makes this write go there: no memory of ours is involved).
            unsafe { libc::write(bell.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// The crash slots, claimed atomically by the host's signal handler.
    pub fn crash_slots(&self) -> &[CrashSlot] {
        // SAFETY: CRASH_OFFSET + CRASH_SLOTS * 128 <= CTL_OFFSET <= len (const asserts); the
        // offset 64 is aligned for CrashSlot (align 64); CrashSlot is made of atomics only.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(CRASH_OFFSET).cast::<CrashSlot>(),
                CRASH_SLOTS,
            )
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe our own mapping (invariant) and nothing borrows from it
        // any more: every borrow handed out is tied to `&self`, which Drop holds uniquely.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}
