//! The one poison-tolerant lock helper.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when another thread panicked while holding it: the data behind our locks
/// (maps and counters) stays consistent enough to carry on, and refusing would turn one bug
/// into an outage.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `m` if nobody holds it, poison-tolerant like [`lock`]; None while another thread
/// holds it.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}
