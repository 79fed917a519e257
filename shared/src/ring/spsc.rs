//! The single-producer single-consumer byte ring: framing, index protocol and wake-ups.
//!
//! Frames are `[len: u32 | kind: u32][payload][pad to 8]`; the header is one 8-byte atomic word.
//! A frame never wraps: when it does not fit before the end of the data array, the writer
//! publishes a `KIND_SKIP` header covering the rest of the array and writes the frame at offset 0.
//!
//! Index protocol (modelled in `ring::loom`): the writer copies the payload, stores the header,
//! then `tail.store(Release)` (once per batch: a batch's frames are all written before the one
//! store that publishes them, and published early only when the writer must wait for room); the reader `tail.load(Acquire)`s, copies the frame out, then
//! `head.store(Release)`. Sleeping uses a Dekker pair per direction: the sleeper stores its
//! `*_waiting` flag, `fence(SeqCst)`, re-checks the index; the other side stores the index,
//! `fence(SeqCst)`, reads the flag and only then bumps the futex word and calls `futex_wake`.
//! At least one of them sees the other's store, so no wake-up is lost and the busy path makes
//! no system call.
//!
//! **Invariant (reader):** `head` and `tail` are read once into locals and checked against the
//! capacity before use; a frame is copied out with raw-pointer copies (never a `&[u8]` into
//! shared memory) and only then handed to the caller. Anything inconsistent is
//! `RingError::Corrupt`.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use super::RingError;
use super::layout::{BELL_EVENTFD, BELL_FUTEX, FRAME_HEADER, KIND_FRAME, KIND_SKIP, align8};
use super::memfd::Region;
use super::wait::{SAFETY_NET, SpinBudget, futex_wait, futex_wake};

/// Spin budget of a writer waiting for room: backpressure is rare, so a short fixed spin.
const WRITER_SPIN: Duration = Duration::from_micros(20);

fn header_word(region: &Region, dir: usize, off: usize) -> &AtomicU64 {
    debug_assert!(off.is_multiple_of(8) && off + 8 <= region.cap(dir));
    // SAFETY: callers pass `off = pos & (cap - 1)` with pos a multiple of 8, so
    // off + 8 <= cap and the address is 8-aligned (the data array starts page-aligned);
    // the word lies inside the live mapping. An AtomicU64 accepts any bit pattern.
    unsafe { &*region.data(dir).add(off).cast::<AtomicU64>() }
}

/// The writing end of one direction. Not `Sync` by itself; `FrameSender` wraps it in a Mutex.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) dir: usize,
    /// Our own copy of `tail` (the peer could overwrite the shared one): what the reader may
    /// read. Frames of a batch are written past it and published together.
    published: u64,
}

impl Writer {
    pub(crate) fn new(region: &Region, dir: usize) -> Writer {
        let published = region.ctl(dir).tail.load(Ordering::Acquire) & !7;
        Writer { dir, published }
    }

    /// Copies one frame in, waiting up to `timeout` for room.
    pub(crate) fn send(
        &mut self,
        region: &Region,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<(), RingError> {
        self.send_batch(region, &[frame], timeout)
    }

    /// Copies several frames in and publishes them with one `tail` store (and at most one
    /// wake-up) when they fit; a batch that does not fit is published in parts, each before
    /// the writer waits for room. No frame is written if any is over the limit.
    pub(crate) fn send_batch<F: AsRef<[u8]>>(
        &mut self,
        region: &Region,
        frames: &[F],
        timeout: Duration,
    ) -> Result<(), RingError> {
        let max = region.frame_limit(self.dir);
        if let Some(f) = frames.iter().find(|f| f.as_ref().len() > max) {
            return Err(RingError::TooLarge {
                len: f.as_ref().len(),
                max,
            });
        }
        let start = Instant::now();
        let mut staged = self.published;
        for frame in frames {
            let r = self.stage(region, frame.as_ref(), start, timeout, &mut staged);
            if let Err(e) = r {
                // What was staged before the failure is complete: let the reader have it.
                self.publish(region, staged);
                return Err(e);
            }
        }
        self.publish(region, staged);
        Ok(())
    }

    /// Writes one frame after `*staged` without publishing it (publishing what is staged
    /// before waiting for room, so the reader can make some).
    fn stage(
        &mut self,
        region: &Region,
        frame: &[u8],
        start: Instant,
        timeout: Duration,
        staged: &mut u64,
    ) -> Result<(), RingError> {
        let cap = region.cap(self.dir);
        let total = align8(FRAME_HEADER + frame.len());
        loop {
            if region.any_closed() {
                return Err(RingError::PeerGone);
            }
            let ctl = region.ctl(self.dir);
            let head = ctl.head.load(Ordering::Acquire);
            let used = staged.wrapping_sub(head);
            if used > cap as u64 || !head.is_multiple_of(8) {
                return Err(RingError::Corrupt {
                    what: format!(
                        "reader index {head} is inconsistent with writer index {} (capacity {cap})",
                        *staged
                    ),
                });
            }
            let free = cap - used as usize;
            let off = (*staged as usize) & (cap - 1);
            let contiguous = cap - off;
            if total <= contiguous {
                if free >= total {
                    self.write_frame(region, off, frame);
                    *staged = staged.wrapping_add(total as u64);
                    return Ok(());
                }
            } else if free >= contiguous {
                // The frame would wrap: skip to the start of the array and try again there.
                header_word(region, self.dir, off)
                    .store(u64::from(KIND_SKIP) << 32, Ordering::Relaxed);
                *staged = staged.wrapping_add(contiguous as u64);
                continue;
            }
            // No room: the reader can only make room from what it can see.
            self.publish(region, *staged);
            self.wait_for_room(region, start, timeout, head)?;
        }
    }

    /// Checks the reader's `head` (peer memory) against what we published, as `stage` does
    /// before each write: `Corrupt` if the peer moved it somewhere impossible.
    pub(crate) fn check_reader(&self, region: &Region) -> Result<(), RingError> {
        let cap = region.cap(self.dir) as u64;
        let head = region.ctl(self.dir).head.load(Ordering::Acquire);
        if self.published.wrapping_sub(head) > cap || !head.is_multiple_of(8) {
            return Err(RingError::Corrupt {
                what: format!(
                    "reader index {head} is inconsistent with writer index {} (capacity {cap})",
                    self.published
                ),
            });
        }
        Ok(())
    }

    fn write_frame(&self, region: &Region, off: usize, frame: &[u8]) {
        // SAFETY: off + align8(8 + len) <= ring_bytes (checked by the caller), so the payload
        // range [off + 8, off + 8 + len) lies in this direction's data array; the reader does not
        // touch bytes between head and tail + free space (the free space is ours until published);
        // `frame` is a separate Rust slice, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                region.data(self.dir).add(off + FRAME_HEADER),
                frame.len(),
            );
        }
        let word = (u64::from(KIND_FRAME) << 32) | frame.len() as u64;
        header_word(region, self.dir, off).store(word, Ordering::Relaxed);
    }

    /// Makes everything written up to `tail` visible to the reader (one `tail` store), and
    /// wakes it if it announced it is going to sleep. Nothing to do when nothing is staged.
    fn publish(&mut self, region: &Region, tail: u64) {
        if tail == self.published {
            return;
        }
        let ctl = region.ctl(self.dir);
        self.published = tail;
        ctl.tail.store(self.published, Ordering::Release);
        fence(Ordering::SeqCst);
        if ctl.reader_waiting.load(Ordering::Relaxed) != 0 {
            ctl.data_seq.fetch_add(1, Ordering::Release);
            futex_wake(&ctl.data_seq, 1);
        }
        // Every from-host ring also rings the supervisor's doorbell: its one reader may sleep
        // there for the control ring and all lanes at once (same Dekker pair, same fence).
        // The async reader sleeps on the region's eventfd instead of the futex: then one
        // `write` to it, and no futex call.
        if self.dir & 1 == 1 {
            let bell = region.doorbell();
            let waiting = bell.waiting.load(Ordering::Relaxed);
            if waiting != 0 {
                bell.seq.fetch_add(1, Ordering::Release);
                if waiting & BELL_EVENTFD != 0 {
                    region.ring_bell();
                }
                if waiting & BELL_FUTEX != 0 {
                    futex_wake(&bell.seq, 1);
                }
            }
        }
    }

    fn wait_for_room(
        &self,
        region: &Region,
        start: Instant,
        timeout: Duration,
        seen_head: u64,
    ) -> Result<(), RingError> {
        let ctl = region.ctl(self.dir);
        let moved = || ctl.head.load(Ordering::Acquire) != seen_head || region.any_closed();
        if start.elapsed() >= timeout {
            // A zero timeout means "do not wait at all" (HostLink's quick attempt).
            return Err(RingError::Full);
        }
        let s = WRITER_SPIN.min(timeout);
        let spin = SpinBudget::new(s, s);
        if spin.spin(Instant::now(), moved) {
            return Ok(());
        }
        loop {
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(RingError::Full);
            }
            let seq = ctl.space_seq.load(Ordering::Acquire);
            ctl.writer_waiting.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if moved() {
                ctl.writer_waiting.store(0, Ordering::Relaxed);
                return Ok(());
            }
            futex_wait(&ctl.space_seq, seq, (timeout - elapsed).min(SAFETY_NET));
            ctl.writer_waiting.store(0, Ordering::Relaxed);
            if moved() {
                return Ok(());
            }
        }
    }
}

/// What a non-blocking read found.
pub(crate) enum Polled {
    Frame,
    Empty,
}

/// The reading end of one direction.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) dir: usize,
    /// Our own copy of `head`.
    head: u64,
    pub(crate) spin: SpinBudget,
    /// The longest sleep of a wait without a timeout before the ring is looked at again.
    pub(crate) nap: Duration,
    /// Set after a corrupt frame: the ring's contents can no longer be trusted.
    broken: Option<String>,
}

impl Reader {
    pub(crate) fn new(region: &Region, dir: usize) -> Reader {
        let head = region.ctl(dir).head.load(Ordering::Acquire) & !7;
        Reader {
            dir,
            head,
            spin: SpinBudget::default(),
            nap: SAFETY_NET,
            broken: None,
        }
    }

    fn corrupt(&mut self, what: String) -> RingError {
        self.broken = Some(what.clone());
        RingError::Corrupt { what }
    }

    /// Takes the next frame if one is published.
    pub(crate) fn poll(&mut self, region: &Region, buf: &mut Vec<u8>) -> Result<Polled, RingError> {
        if let Some(what) = &self.broken {
            return Err(RingError::Corrupt { what: what.clone() });
        }
        let cap = region.cap(self.dir);
        loop {
            let ctl = region.ctl(self.dir);
            let tail = ctl.tail.load(Ordering::Acquire);
            let used = tail.wrapping_sub(self.head);
            if used == 0 {
                return Ok(Polled::Empty);
            }
            if used > cap as u64 || !tail.is_multiple_of(8) {
                return Err(self.corrupt(format!(
                    "writer index {tail} is inconsistent with reader index {} (capacity {cap})",
                    self.head
                )));
            }
            let used = used as usize;
            let off = (self.head as usize) & (cap - 1);
            let word = header_word(region, self.dir, off).load(Ordering::Relaxed);
            let kind = (word >> 32) as u32;
            let len = (word & 0xffff_ffff) as usize;
            if kind == KIND_SKIP {
                let skip = cap - off;
                if skip > used {
                    return Err(self.corrupt(format!(
                        "skip marker at offset {off} covers {skip} bytes but only {used} are published"
                    )));
                }
                self.advance(region, skip as u64);
                continue;
            }
            if kind != KIND_FRAME {
                return Err(self.corrupt(format!(
                    "frame header {word:#018x} at offset {off} has an unknown kind"
                )));
            }
            let total = align8(FRAME_HEADER + len);
            if len > region.frame_limit(self.dir) || total > used || off + total > cap {
                return Err(self.corrupt(format!(
                    "frame length {len} at offset {off} does not fit: {used} bytes published, \
                     limit {} bytes, capacity {cap}",
                    region.frame_limit(self.dir)
                )));
            }
            buf.clear();
            buf.reserve(len);
            // SAFETY: [off + 8, off + 8 + len) lies inside this direction's data array
            // (off + total <= cap, checked above) and `buf` has `len` bytes of spare capacity
            // (reserve); the ranges cannot overlap (Rust heap vs. the shared mapping). The bytes
            // may be changed by a hostile peer while we copy: we only copy them, never trust them
            // until the caller verifies the copy. set_len is fine: all `len` bytes were written.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    region.data(self.dir).add(off + FRAME_HEADER),
                    buf.as_mut_ptr(),
                    len,
                );
                buf.set_len(len);
            }
            self.advance(region, total as u64);
            return Ok(Polled::Frame);
        }
    }

    fn advance(&mut self, region: &Region, bytes: u64) {
        let ctl = region.ctl(self.dir);
        self.head = self.head.wrapping_add(bytes);
        ctl.head.store(self.head, Ordering::Release);
        fence(Ordering::SeqCst);
        if ctl.writer_waiting.load(Ordering::Relaxed) != 0 {
            ctl.space_seq.fetch_add(1, Ordering::Release);
            futex_wake(&ctl.space_seq, 1);
        }
    }

    /// Whether a corrupt frame was seen (every later `poll` is `Corrupt`).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Whether the writer published something we have not read (a hint: `poll` validates).
    pub(crate) fn has_data(&self, region: &Region) -> bool {
        region.ctl(self.dir).tail.load(Ordering::Acquire) != self.head
    }

    /// Waits for a frame; `None` waits until one arrives or a side is closed.
    pub(crate) fn recv(
        &mut self,
        region: &Region,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), RingError> {
        match self.recv_or(region, buf, timeout, &|| false)? {
            true => Ok(()),
            false => Err(RingError::Timeout),
        }
    }

    /// As `recv`, but also returns (`Ok(false)`, nothing read) as soon as `woken()` is true;
    /// whoever makes it true must then call `Region::nudge_reader` for this ring, so a sleeping
    /// reader sees it (the same Dekker pair as a publish).
    pub(crate) fn recv_or(
        &mut self,
        region: &Region,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
        woken: &dyn Fn() -> bool,
    ) -> Result<bool, RingError> {
        // A frame already waiting (the common case under load) costs no clock read.
        if let Polled::Frame = self.poll(region, buf)? {
            return Ok(true);
        }
        if woken() {
            return Ok(false);
        }
        let start = Instant::now();
        let ctl = region.ctl(self.dir);
        let head = self.head;
        let arrived = || ctl.tail.load(Ordering::Acquire) != head || region.any_closed() || woken();
        if self.spin.spin(start, arrived) {
            self.spin.spun(start.elapsed());
        } else {
            loop {
                let elapsed = start.elapsed();
                if let Some(t) = timeout
                    && elapsed >= t
                {
                    return Err(RingError::Timeout);
                }
                let nap = timeout.map_or(self.nap, |t| (t - elapsed).min(self.nap));
                let seq = ctl.data_seq.load(Ordering::Acquire);
                ctl.reader_waiting.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if arrived() {
                    ctl.reader_waiting.store(0, Ordering::Relaxed);
                    break;
                }
                futex_wait(&ctl.data_seq, seq, nap);
                ctl.reader_waiting.store(0, Ordering::Relaxed);
                if arrived() {
                    break;
                }
            }
            self.spin.slept(start.elapsed());
        }
        // `arrived()` saw new data or the closed flag; this poll reads the tail again AFTER that
        // flag load, so frames published before a close are still delivered (`ring::loom`).
        match self.poll(region, buf)? {
            Polled::Frame => Ok(true),
            Polled::Empty if region.any_closed() => Err(RingError::PeerGone),
            Polled::Empty if woken() => Ok(false),
            // Cannot happen (arrived() only returns true on new data, a close or a nudge).
            Polled::Empty => self.recv_or(
                region,
                buf,
                timeout.map(|t| t.saturating_sub(start.elapsed())),
                woken,
            ),
        }
    }

    #[cfg(test)]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }
}

/// Fault injection for tests: writes raw bytes at the writer's position and publishes `publish`
/// bytes of them (which may be fewer than written, or a lie). Bypasses every check.
pub(crate) fn write_raw(w: &mut Writer, region: &Region, bytes: &[u8], publish: u64) {
    let cap = region.cap(w.dir);
    let off = (w.published as usize) & (cap - 1);
    let n = bytes.len().min(cap - off);
    // SAFETY: [off, off + n) lies inside the data array (n <= cap - off); `bytes` is a separate
    // Rust slice.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.data(w.dir).add(off), n);
    }
    if publish > 0 {
        w.publish(region, w.published.wrapping_add(publish));
    }
}
