//! Spin-then-futex waiting.
//!
//! Waking a sleeping process on the other vCPU costs ~20-25 µs per hop on our VM while a spinning
//! hand-off costs ~0.1 µs (TOOLCHAIN.md), so a waiter first spins for an adaptive budget and only
//! then sleeps on a *shared* futex (no `FUTEX_PRIVATE_FLAG`: the two sides are different
//! processes). Writers only call `futex_wake` when the reader announced it is going to sleep, so
//! the busy path makes no system calls.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// Longest single futex sleep. Every wait re-checks the closed flags at least this often, a
/// safety net in case a wake-up is lost (for example a peer killed between two stores).
pub const SAFETY_NET: Duration = Duration::from_millis(100);

/// Sleeps while `*word == expected`, for at most `timeout`. Returns on wake-up, on a value
/// change, on a signal or on timeout; callers re-check their condition either way.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word` (valid for the borrow, and for the
    // mapping's life since the Region outlives every reference into it) and `ts`, a live local.
    // The unused uaddr2/val3 arguments may be anything. Errors (EAGAIN, EINTR, ETIMEDOUT) are
    // all "re-check and carry on".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` waiters sleeping on `word` (in any process mapping the same memory).
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key (valid for the borrow); the
    // timeout/uaddr2/val3 arguments are ignored for this operation.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// An adaptive spin budget.
///
/// The rule (see docs/ring.md for the measurements behind the limits):
/// - a wait that ended while spinning took `w`: budget = max(budget * 7/8, 2w), so it follows a
///   peer that answers quickly and slowly decays toward what is needed;
/// - a wait that spun out and then slept but still ended within `max` (the spin was nearly
///   enough): budget = 2w, so the next wait of that kind is caught by spinning;
/// - a longer wait (the peer was idle): budget halves, down to `min`, so an idle pair burns at
///   most `min` of CPU per message.
#[derive(Debug, Clone, Copy)]
pub struct SpinBudget {
    budget_ns: u64,
    min_ns: u64,
    max_ns: u64,
    yield_after: Duration,
}

/// How long a spin stays pure (no `sched_yield`) before it starts yielding between checks.
pub const YIELD_AFTER: Duration = Duration::from_micros(1);

/// Default smallest spin budget.
pub const DEFAULT_MIN_SPIN: Duration = Duration::from_micros(2);
/// Default largest spin budget: about two futex wake-ups on our VM; spinning longer than that
/// costs more CPU than the sleep would cost latency.
pub const DEFAULT_MAX_SPIN: Duration = Duration::from_micros(50);

impl Default for SpinBudget {
    fn default() -> Self {
        SpinBudget::new(DEFAULT_MIN_SPIN, DEFAULT_MAX_SPIN)
    }
}

impl SpinBudget {
    /// A budget that adapts between `min` and `max` (`max` < `min` is treated as `max == min`);
    /// `min == max == 0` disables spinning.
    pub fn new(min: Duration, max: Duration) -> SpinBudget {
        let min_ns = min.as_nanos().min(u128::from(u64::MAX)) as u64;
        let max_ns = (max.as_nanos().min(u128::from(u64::MAX)) as u64).max(min_ns);
        SpinBudget {
            budget_ns: min_ns.max(max_ns / 4),
            min_ns,
            max_ns,
            yield_after: YIELD_AFTER,
        }
    }

    /// Spins purely for `d`, then yields the CPU between checks (`Duration::MAX`: never yield).
    pub fn with_yield_after(mut self, d: Duration) -> SpinBudget {
        self.yield_after = d;
        self
    }

    /// The current budget.
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.budget_ns)
    }

    fn clamp(&self, v: u64) -> u64 {
        v.clamp(self.min_ns, self.max_ns)
    }

    /// Records a wait that was satisfied while spinning after `waited`.
    pub fn spun(&mut self, waited: Duration) {
        let w = waited.as_nanos().min(u128::from(u64::MAX / 4)) as u64;
        self.budget_ns = self.clamp((self.budget_ns - self.budget_ns / 8).max(2 * w));
    }

    /// Records a wait that spun out, slept, and ended after `waited` in total.
    pub fn slept(&mut self, waited: Duration) {
        let w = waited.as_nanos().min(u128::from(u64::MAX / 4)) as u64;
        self.budget_ns = if w <= self.max_ns {
            self.clamp(2 * w)
        } else {
            self.clamp(self.budget_ns / 2)
        };
    }

    /// Spins until `ready()` or the budget runs out; returns whether `ready()` became true.
    pub fn spin(&self, start: Instant, mut ready: impl FnMut() -> bool) -> bool {
        if self.budget_ns == 0 {
            return ready();
        }
        let budget = Duration::from_nanos(self.budget_ns);
        loop {
            // Reading the clock costs ~25 ns; check it every few rounds only.
            for _ in 0..16 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            let spent = start.elapsed();
            if spent >= budget {
                return ready();
            }
            // Past the first microsecond, yield between checks: on an oversubscribed machine
            // the peer we wait for may be queued behind us on this very CPU, and pure spinning
            // would keep it off until our time slice ends (measured: docs/benchmarks.md).
            if spent >= self.yield_after {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grows_after_near_misses_and_shrinks_when_idle() {
        let mut b = SpinBudget::new(Duration::from_micros(2), Duration::from_micros(50));
        b.slept(Duration::from_micros(20));
        assert_eq!(b.current(), Duration::from_micros(40));
        b.slept(Duration::from_secs(1));
        assert_eq!(b.current(), Duration::from_micros(20));
        for _ in 0..20 {
            b.slept(Duration::from_secs(1));
        }
        assert_eq!(b.current(), Duration::from_micros(2));
        b.spun(Duration::from_micros(10));
        assert_eq!(b.current(), Duration::from_micros(20));
        b.spun(Duration::from_nanos(100));
        assert_eq!(
            b.current(),
            Duration::from_micros(17) + Duration::from_nanos(500)
        );
    }

    #[test]
    fn futex_wait_sleeps_until_its_timeout_when_nobody_wakes_it() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        futex_wait(&w, 5, Duration::from_millis(30));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
