//! The one poison-tolerant way to take a lock, for every crate of the workspace.
//!
//! A lock is poisoned when a thread panicked while holding it. The data behind our locks (maps,
//! counters, queues) stays consistent enough to carry on, and refusing every later caller would
//! turn one bug into an outage, so every lock is taken through these methods instead of
//! `lock().unwrap_or_else(PoisonError::into_inner)` copies.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `Mutex` taken also when poisoned.
pub trait Locked<T: ?Sized> {
    /// Locks, also when another thread panicked while holding the lock.
    fn locked(&self) -> MutexGuard<'_, T>;
    /// Locks if nobody holds it (also when poisoned); None while another thread holds it.
    fn try_locked(&self) -> Option<MutexGuard<'_, T>>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_locked(&self) -> Option<MutexGuard<'_, T>> {
        match self.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// `RwLock` taken also when poisoned.
pub trait RwLocked<T: ?Sized> {
    /// Read-locks, also when another thread panicked while holding the lock.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, also when another thread panicked while holding the lock.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_still_taken_with_its_data() {
        let m = Arc::new(Mutex::new(vec![1]));
        let rw = Arc::new(RwLock::new(7));
        let (m2, rw2) = (m.clone(), rw.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = rw2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && rw.is_poisoned());
        m.locked().push(2);
        assert_eq!(*m.try_locked().expect("free"), vec![1, 2]);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 8);
        let held = m.locked();
        assert!(m.try_locked().is_none(), "held elsewhere");
        drop(held);
    }
}
