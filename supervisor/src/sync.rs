//! Free-function forms of the workspace's one poison-tolerant lock helper
//! ([`wm_shared::sync`]), for the bus and the pool that pass locks around by reference.

use std::sync::{Mutex, MutexGuard};

use wm_shared::sync::Locked as _;

/// Locks `m`, also when another thread panicked while holding it ([`wm_shared::sync::Locked`]).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.locked()
}

/// Locks `m` if nobody holds it, poison-tolerant like [`lock`]; None while another thread
/// holds it.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    m.try_locked()
}
