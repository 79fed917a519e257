//! The frame loop -> worker thread hand-off: a FIFO that spins before it parks.
//!
//! A blocking channel parks the worker thread on a futex the moment its queue is empty, so a
//! busy back-to-back caller paid a wake-up (7-14 us on our VM, docs/benchmarks.md) inside the
//! host for every call. Here a waiting thread first spins with the ring's adaptive
//! [`SpinBudget`] (pure for 1 us, then yielding), and only then sleeps on a futex; the pusher
//! makes a system call only when a thread announced it sleeps (the ring's Dekker pair:
//! `sleepers` store, `fence(SeqCst)`, re-check / push, `fence(SeqCst)`, read `sleepers`). Idle
//! threads end up asleep: the budget shrinks to its 2 us floor when waits are long, so an idle
//! host burns no CPU.
//!
//! The queue itself is a `Mutex<VecDeque>` of one worker, touched by the frame loop and that
//! worker's own threads only, for a push or a pop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use wm_shared::sync::Locked as _;

use wm_shared::ring::SpinBudget;
use wm_shared::ring::wait::{futex_wait, futex_wake};

/// Longest single sleep of an idle worker thread. Both ends live in this process (no peer can
/// die between two stores), so the Dekker pair alone prevents lost wake-ups; the bound only
/// keeps an idle host's threads from waking ten times a second as the ring's 100 ms net would.
pub(crate) const NAP: std::time::Duration = std::time::Duration::from_secs(10);

/// Set by `--no-spin` (measurement only: the callgrind guard counts the instructions of the
/// work, not of waits whose length depends on timing).
static NO_SPIN: AtomicBool = AtomicBool::new(false);

/// Makes every later [`spin_budget`] a budget that never spins.
pub fn disable_spinning() {
    NO_SPIN.store(true, Ordering::Relaxed);
}

/// The spin budget of the host's waits: the ring's adaptive default, or none (`--no-spin`).
pub fn spin_budget() -> SpinBudget {
    if NO_SPIN.load(Ordering::Relaxed) {
        SpinBudget::new(std::time::Duration::ZERO, std::time::Duration::ZERO)
    } else {
        SpinBudget::default()
    }
}

/// A multi-consumer FIFO with spin-then-park waiting.
#[derive(Debug)]
pub struct Handoff<T> {
    queue: Mutex<VecDeque<T>>,
    /// Items queued: read without the lock while spinning.
    len: AtomicUsize,
    closed: AtomicBool,
    /// Threads that announced they are about to sleep (or sleep).
    sleepers: AtomicU32,
    /// The futex word: bumped by every wake.
    seq: AtomicU32,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            sleepers: AtomicU32::new(0),
            seq: AtomicU32::new(0),
        }
    }
}

impl<T> Handoff<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A panic while holding the lock leaves a VecDeque that is still consistent.
        self.queue.locked()
    }

    /// Queues `item`; gives it back if the queue is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        {
            let mut q = self.lock();
            if self.closed.load(Ordering::Relaxed) {
                return Err(item);
            }
            q.push_back(item);
            self.len.fetch_add(1, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.seq.fetch_add(1, Ordering::Release);
            futex_wake(&self.seq, 1);
        }
        Ok(())
    }

    /// No more pushes; waiting threads drain what is queued, then [`Handoff::pop`] says `None`.
    pub fn close(&self) {
        {
            let _q = self.lock();
            self.closed.store(true, Ordering::SeqCst);
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.seq, i32::MAX);
    }

    /// Takes the next item without waiting.
    pub fn try_pop(&self) -> Option<T> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = self.lock();
        let item = q.pop_front();
        if item.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }

    /// Moves up to `max` queued items into `out` without waiting; how many.
    fn take(&self, max: usize, out: &mut VecDeque<T>) -> usize {
        if self.len.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut q = self.lock();
        let n = q.len().min(max.max(1));
        out.extend(q.drain(..n));
        self.len.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Whether there is something to take, or the queue is closed (a lane thread's wake-up
    /// condition besides its lane).
    pub fn ready(&self) -> bool {
        self.len.load(Ordering::Acquire) != 0 || self.closed.load(Ordering::Acquire)
    }

    /// Moves up to `max` queued items into `out` without waiting. `false` once the queue is
    /// closed and empty (everything pushed before the close has then been taken).
    pub fn take_ready(&self, max: usize, out: &mut VecDeque<T>) -> bool {
        if self.take(max, out) > 0 {
            return true;
        }
        if self.closed.load(Ordering::Acquire) {
            return self.drain_closed(max, out);
        }
        true
    }

    /// Takes what is left of a closed queue, up to `max` items; `false` when nothing was.
    fn drain_closed(&self, max: usize, out: &mut VecDeque<T>) -> bool {
        // Closed under the lock: every push happened before, and is visible now.
        let mut q = self.lock();
        let n = q.len().min(max.max(1));
        out.extend(q.drain(..n));
        self.len.fetch_sub(n, Ordering::Relaxed);
        n > 0
    }

    /// Waits for the next item: spins within `spin` (adapting it), then sleeps. `None` once
    /// the queue is closed and empty.
    pub fn pop(&self, spin: &mut SpinBudget) -> Option<T> {
        let mut one = VecDeque::with_capacity(1);
        self.pop_batch(spin, 1, &mut one).then(|| one.pop_front())?
    }

    /// Waits as [`Handoff::pop`], then moves whatever is queued, up to `max` items, into
    /// `out` (a batch is what is ready, never a wait for more). `false` once the queue is
    /// closed and empty.
    pub fn pop_batch(&self, spin: &mut SpinBudget, max: usize, out: &mut VecDeque<T>) -> bool {
        loop {
            if self.take(max, out) > 0 {
                return true;
            }
            if self.closed.load(Ordering::Acquire) {
                return self.drain_closed(max, out);
            }
            let start = Instant::now();
            let ready =
                || self.len.load(Ordering::Acquire) != 0 || self.closed.load(Ordering::Acquire);
            if spin.spin(start, ready) {
                spin.spun(start.elapsed());
                continue;
            }
            let seq = self.seq.load(Ordering::Acquire);
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !ready() {
                futex_wait(&self.seq, seq, NAP);
            }
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            spin.slept(start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn items_come_out_in_order_and_close_drains_then_ends() {
        let h = Handoff::default();
        for i in 0..5 {
            h.push(i).unwrap();
        }
        h.close();
        assert_eq!(h.push(9), Err(9));
        let mut spin = SpinBudget::default();
        let got: Vec<i32> = std::iter::from_fn(|| h.pop(&mut spin)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_batch_is_whatever_is_queued_up_to_the_maximum() {
        let h = Handoff::default();
        let mut spin = SpinBudget::default();
        let mut out = VecDeque::new();
        h.push(1).unwrap();
        assert!(h.pop_batch(&mut spin, 8, &mut out));
        assert_eq!(
            out.drain(..).collect::<Vec<_>>(),
            vec![1],
            "no wait for more"
        );
        for i in 2..=6 {
            h.push(i).unwrap();
        }
        assert!(h.pop_batch(&mut spin, 3, &mut out));
        assert_eq!(out.drain(..).collect::<Vec<_>>(), vec![2, 3, 4]);
        h.close();
        assert!(h.pop_batch(&mut spin, 8, &mut out));
        assert_eq!(out.drain(..).collect::<Vec<_>>(), vec![5, 6]);
        assert!(!h.pop_batch(&mut spin, 8, &mut out));
    }

    /// Many pushes against several consumers that sleep and spin in turn: every item arrives
    /// exactly once (a lost wake-up would stall a consumer for the 10 s nap; the bound below
    /// catches that).
    #[test]
    fn no_item_is_lost_or_duplicated_across_sleeping_consumers() {
        let h = Arc::new(Handoff::default());
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    // No spinning: every wait goes through the futex path.
                    let mut spin = SpinBudget::new(Duration::ZERO, Duration::ZERO);
                    let mut got = Vec::new();
                    while let Some(i) = h.pop(&mut spin) {
                        got.push(i);
                    }
                    got
                })
            })
            .collect();
        let t = Instant::now();
        for i in 0..20_000u32 {
            h.push(i).unwrap();
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        h.close();
        let mut all: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20_000).collect::<Vec<_>>());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn an_idle_consumer_sleeps_instead_of_spinning() {
        let h = Arc::new(Handoff::<u32>::default());
        let c = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut spin = SpinBudget::default();
                h.pop(&mut spin)
            })
        };
        // Give it time to spin out and go to sleep.
        let t = Instant::now();
        while h.sleepers.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        h.push(7).unwrap();
        assert_eq!(c.join().unwrap(), Some(7));
    }
}
