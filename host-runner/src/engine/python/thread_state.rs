//! One Python thread state per worker thread, kept between calls.
//!
//! `Python::attach` on a thread Python does not know creates a thread state
//! (`PyGILState_Ensure`) and, when the call ends, deletes it again (`PyGILState_Release` with
//! its counter back at zero): an allocation, the interpreter's thread list locked twice, the
//! state's dict (and every `threading.local` of the thread, such as the per-thread asyncio
//! loop) thrown away, on every message. Keeping one `Ensure` outstanding for the thread's life
//! makes later attaches only take and drop the GIL. The state is deleted when the thread ends.

use std::cell::RefCell;

use pyo3::ffi;

/// Deletes the kept thread state when its thread ends.
struct Kept;

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: `keep` left this thread with a thread state whose gilstate counter is 1 and
        // the GIL released; nothing is attached while thread-local destructors run. Taking
        // the GIL with that state and releasing it with PyGILState_UNLOCKED brings the counter
        // to 0, so CPython clears and deletes the state and releases the GIL. Skipped if the
        // interpreter is gone (the host never finalizes it, but be safe).
        unsafe {
            if ffi::Py_IsInitialized() == 0 {
                return;
            }
            let ts = ffi::PyGILState_GetThisThreadState();
            if ts.is_null() {
                return;
            }
            ffi::PyEval_RestoreThread(ts);
            ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
        }
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Gives this thread a Python thread state that outlives each call. Call it only after the
/// interpreter started, and never while this thread is attached (`Python::attach`).
pub(super) fn keep() {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.is_some() {
            return;
        }
        // SAFETY: the interpreter is initialized (the engine's runtime started first) and this
        // thread is not attached, so PyGILState_Ensure creates this thread's state (counter 1)
        // and takes the GIL; PyEval_SaveThread releases the GIL and keeps the state. The
        // counter stays at 1 until `Kept::drop`, so later attaches (Ensure/Release pairs)
        // never delete it.
        unsafe {
            let _ = ffi::PyGILState_Ensure();
            ffi::PyEval_SaveThread();
        }
        *k = Some(Kept);
    });
}
