//! Model-checked tests of the SPSC index and wake-up protocol of `spsc.rs`.
//!
//! Run with: `RUSTFLAGS="--cfg loom" cargo test -p workmanager-shared --release ring::loom`
//!
//! loom cannot run a real futex, so the model replaces it with a mutex + condvar that has the
//! futex's one essential property: "compare the word and go to sleep" is atomic with respect to
//! a wake. Everything else (the order of stores, loads and fences on tail/head, the waiting
//! flags and sequence words, the closed flag) is copied from `spsc.rs` and `memfd.rs`. loom
//! explores every interleaving allowed by the C++ memory model and fails on a data race on the
//! slot contents (they live in a loom `UnsafeCell`) or on a deadlock, which is what a lost
//! wake-up looks like here (the model's waits have no timeout, unlike the real ones).

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// A futex stand-in: `wait` sleeps only if the word still holds `expected`, atomically with
/// respect to `wake`.
struct Futex {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Futex {
    fn new() -> Futex {
        Futex {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }
    fn wait(&self, word: &AtomicU32, expected: u32) {
        let g = self.lock.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(self.cv.wait(g).unwrap());
        }
    }
    fn wake(&self) {
        let _g = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
}

const CAP: u64 = 2;

/// Runs `f` under loom with a preemption bound: exhaustive up to 3 forced context switches per
/// execution (loom's documented practice; bugs almost always need few preemptions), which keeps
/// the run to minutes on our 2-vCPU VM. `LOOM_MAX_PREEMPTIONS` overrides it.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

struct Ring {
    tail: AtomicU64,
    head: AtomicU64,
    reader_waiting: AtomicU32,
    data_seq: AtomicU32,
    writer_waiting: AtomicU32,
    space_seq: AtomicU32,
    closed: AtomicU32,
    slots: [UnsafeCell<u64>; CAP as usize],
    data_futex: Futex,
    space_futex: Futex,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            reader_waiting: AtomicU32::new(0),
            data_seq: AtomicU32::new(0),
            writer_waiting: AtomicU32::new(0),
            space_seq: AtomicU32::new(0),
            closed: AtomicU32::new(0),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            data_futex: Futex::new(),
            space_futex: Futex::new(),
        }
    }

    /// `Writer::send` + `publish` + `wait_for_room`, spin phase left out (it only delays).
    /// Returns false when the ring was closed.
    fn send(&self, tail: &mut u64, value: u64) -> bool {
        loop {
            if self.closed.load(Ordering::SeqCst) != 0 {
                return false;
            }
            let head = self.head.load(Ordering::Acquire);
            if *tail - head < CAP {
                self.slots[(*tail % CAP) as usize].with_mut(|p| {
                    // SAFETY: loom's cell: the slot between head and tail+free is ours; loom
                    // itself reports a race if the protocol lets the reader touch it now.
                    unsafe { *p = value }
                });
                *tail += 1;
                self.tail.store(*tail, Ordering::Release);
                fence(Ordering::SeqCst);
                if self.reader_waiting.load(Ordering::Relaxed) != 0 {
                    self.data_seq.fetch_add(1, Ordering::Release);
                    self.data_futex.wake();
                }
                return true;
            }
            let moved = || {
                self.head.load(Ordering::Acquire) != head || self.closed.load(Ordering::SeqCst) != 0
            };
            let seq = self.space_seq.load(Ordering::Acquire);
            self.writer_waiting.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !moved() {
                self.space_futex.wait(&self.space_seq, seq);
            }
            self.writer_waiting.store(0, Ordering::Relaxed);
        }
    }

    /// `Writer::send_batch`: every value is written past the published tail and the batch is
    /// published with one `tail` store; when the ring is full mid-batch, what is staged is
    /// published before waiting for room (else the reader could never make any). Returns
    /// false when the ring was closed.
    fn send_batch(&self, tail: &mut u64, values: &[u64]) -> bool {
        let mut staged = *tail;
        for &value in values {
            loop {
                if self.closed.load(Ordering::SeqCst) != 0 {
                    self.publish(tail, staged);
                    return false;
                }
                let head = self.head.load(Ordering::Acquire);
                if staged - head < CAP {
                    self.slots[(staged % CAP) as usize].with_mut(|p| {
                        // SAFETY: loom's cell, as in `send`.
                        unsafe { *p = value }
                    });
                    staged += 1;
                    break;
                }
                self.publish(tail, staged);
                let moved = || {
                    self.head.load(Ordering::Acquire) != head
                        || self.closed.load(Ordering::SeqCst) != 0
                };
                let seq = self.space_seq.load(Ordering::Acquire);
                self.writer_waiting.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if !moved() {
                    self.space_futex.wait(&self.space_seq, seq);
                }
                self.writer_waiting.store(0, Ordering::Relaxed);
            }
        }
        self.publish(tail, staged);
        true
    }

    /// `Writer::publish`: one `tail` store for everything staged, then the Dekker check.
    fn publish(&self, tail: &mut u64, staged: u64) {
        if staged == *tail {
            return;
        }
        *tail = staged;
        self.tail.store(*tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.reader_waiting.load(Ordering::Relaxed) != 0 {
            self.data_seq.fetch_add(1, Ordering::Release);
            self.data_futex.wake();
        }
    }

    /// `Reader::poll` + `advance` + the sleeping part of `Reader::recv`. None when closed and
    /// drained.
    fn recv(&self, head: &mut u64) -> Option<u64> {
        loop {
            // The closed flag is read BEFORE the tail: a reader that sees "closed" then sees
            // every frame published before the close. (Reading the tail first was the bug this
            // model found: a stale tail plus a fresh closed flag dropped the last frame.)
            let closed = self.closed.load(Ordering::SeqCst) != 0;
            let tail = self.tail.load(Ordering::Acquire);
            if tail != *head {
                let v = self.slots[(*head % CAP) as usize].with(|p| {
                    // SAFETY: loom's cell, as above.
                    unsafe { *p }
                });
                *head += 1;
                self.head.store(*head, Ordering::Release);
                fence(Ordering::SeqCst);
                if self.writer_waiting.load(Ordering::Relaxed) != 0 {
                    self.space_seq.fetch_add(1, Ordering::Release);
                    self.space_futex.wake();
                }
                return Some(v);
            }
            if closed {
                return None;
            }
            let h = *head;
            let arrived = || {
                self.tail.load(Ordering::Acquire) != h || self.closed.load(Ordering::SeqCst) != 0
            };
            let seq = self.data_seq.load(Ordering::Acquire);
            self.reader_waiting.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !arrived() {
                self.data_futex.wait(&self.data_seq, seq);
            }
            self.reader_waiting.store(0, Ordering::Relaxed);
        }
    }

    /// `Region::mark_closed`.
    fn close(&self) {
        self.closed.store(1, Ordering::SeqCst);
        self.data_seq.fetch_add(1, Ordering::SeqCst);
        self.space_seq.fetch_add(1, Ordering::SeqCst);
        self.data_futex.wake();
        self.space_futex.wake();
    }
}

/// Three values through a ring of two slots: the writer must sleep for room at least in some
/// interleavings and the reader for data in others; no wake-up is lost, no slot is read before
/// it is written, and values arrive in order.
#[test]
fn no_lost_wakeups_and_no_races_in_spsc() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let w = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut tail = 0;
                for v in 1..=3 {
                    assert!(ring.send(&mut tail, v));
                }
            })
        };
        let mut head = 0;
        for v in 1..=3 {
            assert_eq!(ring.recv(&mut head), Some(v));
        }
        w.join().unwrap();
    });
}

/// Closing wakes a reader that is about to sleep or asleep, whatever the interleaving.
#[test]
fn close_wakes_a_sleeping_reader() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let c = {
            let ring = ring.clone();
            thread::spawn(move || ring.close())
        };
        let mut head = 0;
        assert_eq!(ring.recv(&mut head), None);
        c.join().unwrap();
    });
}

/// Closing wakes a writer blocked on a full ring.
#[test]
fn close_wakes_a_blocked_writer() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let mut tail = 0;
        assert!(ring.send(&mut tail, 1));
        assert!(ring.send(&mut tail, 2));
        let c = {
            let ring = ring.clone();
            thread::spawn(move || ring.close())
        };
        assert!(!ring.send(&mut tail, 3));
        c.join().unwrap();
    });
}

/// A frame published just before the close is still delivered, then the reader sees the end.
#[test]
fn frames_published_before_close_are_drained() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let w = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut tail = 0;
                assert!(ring.send(&mut tail, 7));
                ring.close();
            })
        };
        let mut head = 0;
        assert_eq!(ring.recv(&mut head), Some(7));
        assert_eq!(ring.recv(&mut head), None);
        w.join().unwrap();
    });
}

/// A batch of three through a ring of two: the writer stages two values, must publish them
/// before it waits for room for the third, and the reader (which may sleep at any point) gets
/// all three in order with no race on a slot.
#[test]
fn batches_publish_before_waiting_and_lose_no_wakeup() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let w = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut tail = 0;
                assert!(ring.send_batch(&mut tail, &[1, 2, 3]));
            })
        };
        let mut head = 0;
        for v in 1..=3 {
            assert_eq!(ring.recv(&mut head), Some(v));
        }
        w.join().unwrap();
    });
}

/// Lanes (`lanes.rs`): several host writers, each publishing into its own lane, and the
/// supervisor's one reader, which polls every lane and sleeps on the region's doorbell. The
/// writer's half is `Writer::publish` (tail store, `fence(SeqCst)`, read `doorbell.waiting`,
/// bump and wake); the reader's is `MultiReceiver::recv` (load `seq`, store `waiting`,
/// `fence(SeqCst)`, re-check every tail, sleep). A lost wake-up is a deadlock here.
struct Lane {
    tail: AtomicU64,
    slot: UnsafeCell<u64>,
}

struct Bell {
    waiting: AtomicU32,
    seq: AtomicU32,
    futex: Futex,
}

fn publish_lane(lane: &Lane, bell: &Bell, v: u64) {
    lane.slot.with_mut(|p| {
        // SAFETY: loom's cell; the reader only reads it after the Release store of `tail`.
        unsafe { *p = v }
    });
    lane.tail.store(1, Ordering::Release);
    fence(Ordering::SeqCst);
    if bell.waiting.load(Ordering::Relaxed) != 0 {
        bell.seq.fetch_add(1, Ordering::Release);
        bell.futex.wake();
    }
}

#[test]
fn the_doorbell_loses_no_wakeup_across_lanes() {
    model(|| {
        let lanes = Arc::new([
            Lane {
                tail: AtomicU64::new(0),
                slot: UnsafeCell::new(0),
            },
            Lane {
                tail: AtomicU64::new(0),
                slot: UnsafeCell::new(0),
            },
        ]);
        let bell = Arc::new(Bell {
            waiting: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            futex: Futex::new(),
        });
        let writers: Vec<_> = (0..2)
            .map(|k| {
                let (lanes, bell) = (lanes.clone(), bell.clone());
                thread::spawn(move || publish_lane(&lanes[k], &bell, 10 + k as u64))
            })
            .collect();
        let mut heads = [0u64; 2];
        let mut got = [0u64; 2];
        while heads != [1, 1] {
            let mut any = false;
            for k in 0..2 {
                if heads[k] == 0 && lanes[k].tail.load(Ordering::Acquire) != 0 {
                    got[k] = lanes[k].slot.with(|p| {
                        // SAFETY: loom's cell, published by the Acquire load above.
                        unsafe { *p }
                    });
                    heads[k] = 1;
                    any = true;
                }
            }
            if any {
                continue;
            }
            let seq = bell.seq.load(Ordering::Acquire);
            bell.waiting.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let arrived = (0..2).any(|k| lanes[k].tail.load(Ordering::Acquire) != heads[k]);
            if !arrived {
                bell.futex.wait(&bell.seq, seq);
            }
            bell.waiting.store(0, Ordering::Relaxed);
        }
        assert_eq!(got, [10, 11]);
        for w in writers {
            w.join().unwrap();
        }
    });
}

/// An eventfd stand-in: `signal` adds to the counter and wakes; `wait` sleeps while the
/// counter is 0, then takes it (the read that resets it), atomically with respect to `signal`.
struct EventFd {
    count: Mutex<u64>,
    cv: Condvar,
}

impl EventFd {
    fn signal(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut c = self.count.lock().unwrap();
        while *c == 0 {
            c = self.cv.wait(c).unwrap();
        }
        *c = 0;
    }
}

/// The doorbell eventfd (docs/ring.md, "The runtime reads its lanes"): the writers' half is
/// `Writer::publish` with `waiting == BELL_EVENTFD` (tail store, `fence(SeqCst)`, read
/// `waiting`, signal the eventfd); the reader's is `run_async` + `BellWaiter::wait` (drain,
/// `announce_bell_sleep`: store `waiting`, `fence(SeqCst)`, re-check every tail; await the
/// eventfd, read it, `end_bell_sleep`). A stale signal only costs an empty drain; a lost one
/// is a deadlock here.
#[test]
fn the_doorbell_eventfd_loses_no_wakeup_across_lanes() {
    model(|| {
        let lanes = Arc::new([
            Lane {
                tail: AtomicU64::new(0),
                slot: UnsafeCell::new(0),
            },
            Lane {
                tail: AtomicU64::new(0),
                slot: UnsafeCell::new(0),
            },
        ]);
        let waiting = Arc::new(AtomicU32::new(0));
        let bell = Arc::new(EventFd {
            count: Mutex::new(0),
            cv: Condvar::new(),
        });
        let writers: Vec<_> = (0..2)
            .map(|k| {
                let (lanes, waiting, bell) = (lanes.clone(), waiting.clone(), bell.clone());
                thread::spawn(move || {
                    let lane = &lanes[k];
                    lane.slot.with_mut(|p| {
                        // SAFETY: loom's cell; the reader reads it after the Release store.
                        unsafe { *p = 20 + k as u64 }
                    });
                    lane.tail.store(1, Ordering::Release);
                    fence(Ordering::SeqCst);
                    if waiting.load(Ordering::Relaxed) & 2 != 0 {
                        bell.signal();
                    }
                })
            })
            .collect();
        let mut heads = [0u64; 2];
        let mut got = [0u64; 2];
        while heads != [1, 1] {
            // Drain every lane without blocking.
            let mut drained = false;
            for k in 0..2 {
                if heads[k] == 0 && lanes[k].tail.load(Ordering::Acquire) != 0 {
                    got[k] = lanes[k].slot.with(|p| {
                        // SAFETY: loom's cell, published by the Acquire load above.
                        unsafe { *p }
                    });
                    heads[k] = 1;
                    drained = true;
                }
            }
            if drained {
                continue;
            }
            // announce_bell_sleep
            waiting.store(2, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let arrived = (0..2).any(|k| lanes[k].tail.load(Ordering::Acquire) != heads[k]);
            if arrived {
                waiting.store(0, Ordering::Relaxed);
                continue;
            }
            bell.wait();
            waiting.store(0, Ordering::Relaxed);
        }
        assert_eq!(got, [20, 21]);
        for w in writers {
            w.join().unwrap();
        }
    });
}

/// A lane thread waits for its lane or its worker's queue (`FrameReceiver::recv_or`): the
/// frame loop sets the queue's length, then nudges (`Region::nudge_reader`: `fence(SeqCst)`,
/// read `reader_waiting`, bump and wake), while the supervisor may publish into the lane at
/// the same time. The thread must see both, whatever the interleaving.
#[test]
fn a_nudge_and_a_publish_both_reach_a_sleeping_lane_thread() {
    model(|| {
        let ring = Arc::new(Ring::new());
        let queued = Arc::new(AtomicU32::new(0));
        let nudger = {
            let (ring, queued) = (ring.clone(), queued.clone());
            thread::spawn(move || {
                queued.store(1, Ordering::Release);
                fence(Ordering::SeqCst);
                if ring.reader_waiting.load(Ordering::Relaxed) != 0 {
                    ring.data_seq.fetch_add(1, Ordering::Release);
                    ring.data_futex.wake();
                }
            })
        };
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut tail = 0;
                assert!(ring.send(&mut tail, 7));
            })
        };
        let (mut head, mut frame, mut job) = (0u64, false, false);
        while !(frame && job) {
            if !frame && ring.tail.load(Ordering::Acquire) != head {
                let v = ring.slots[0].with(|p| {
                    // SAFETY: loom's cell, published by the Acquire load above.
                    unsafe { *p }
                });
                assert_eq!(v, 7);
                head += 1;
                frame = true;
                continue;
            }
            if !job && queued.load(Ordering::Acquire) != 0 {
                job = true;
                continue;
            }
            let ready = || {
                (!frame && ring.tail.load(Ordering::Acquire) != head)
                    || (!job && queued.load(Ordering::Acquire) != 0)
            };
            let seq = ring.data_seq.load(Ordering::Acquire);
            ring.reader_waiting.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !ready() {
                ring.data_futex.wait(&ring.data_seq, seq);
            }
            ring.reader_waiting.store(0, Ordering::Relaxed);
        }
        nudger.join().unwrap();
        writer.join().unwrap();
    });
}
