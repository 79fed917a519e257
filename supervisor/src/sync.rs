//! The one poison-tolerant lock helper.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when another thread panicked while holding it: the data behind our locks
/// (maps and counters) stays consistent enough to carry on, and refusing would turn one bug
/// into an outage.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
