//! Replies to the supervisor without a lock the worker threads queue on.
//!
//! Every worker thread used to take the one `FrameSender` mutex for each `ProcessResult`, so
//! with many workers the threads of a host waited for each other (and parked on the futex)
//! just to copy a reply into the ring. Here a thread pushes its encoded frame onto a lock-free
//! list and then tries to become the *writer*; the writer takes everything on the list and
//! copies it into the ring as one batch (one `tail` store, at most one wake-up of the
//! supervisor). A thread that finds another one writing just leaves: its frame goes out with
//! that writer's next batch. Nobody ever waits for another thread's write.
//!
//! No frame is stranded: a poster pushes, then tries the flag; the writer clears the flag,
//! then looks at the list again (both `SeqCst`), so either the poster becomes the writer or
//! the writer sees its frame.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use wm_shared::ring::{FrameSender, RingError};

use super::SEND_TIMEOUT;
use crate::sandbox::log;

struct Node {
    frame: Vec<u8>,
    next: *mut Node,
}

/// A multi-producer reply lane over the host's one ring writer.
pub(super) struct ReplyLane {
    /// Frames posted and not yet taken by a writer, newest first (a Treiber stack).
    head: AtomicPtr<Node>,
    writing: AtomicBool,
    tx: FrameSender,
    /// The ring's frame limit, read once.
    max_frame: usize,
}

impl ReplyLane {
    pub(super) fn new(tx: FrameSender) -> ReplyLane {
        ReplyLane {
            head: AtomicPtr::new(ptr::null_mut()),
            writing: AtomicBool::new(false),
            max_frame: tx.region().config().max_frame,
            tx,
        }
    }

    /// The ring's frame limit (a frame over it would fail the whole batch).
    pub(super) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends `frame` now, or with the batch of the thread writing right now.
    pub(super) fn post(&self, frame: Vec<u8>) {
        debug_assert!(frame.len() <= self.max_frame());
        let node = Box::into_raw(Box::new(Node {
            frame,
            next: ptr::null_mut(),
        }));
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` came from Box::into_raw above and is not linked yet: only this
            // thread can reach it.
            unsafe { (*node).next = cur };
            match self
                .head
                .compare_exchange_weak(cur, node, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.flush();
    }

    /// Becomes the writer unless someone else is, and writes until the list stays empty.
    fn flush(&self) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        loop {
            if self
                .writing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                return;
            }
            let list = self.head.swap(ptr::null_mut(), Ordering::SeqCst);
            take_in_order(list, &mut batch);
            if !batch.is_empty() {
                match self.tx.send_batch(&batch, SEND_TIMEOUT) {
                    Ok(()) => {}
                    // The supervisor closed the ring: it is going away and wants no replies.
                    Err(RingError::PeerGone) => {}
                    Err(e) => log(&format!("cannot send {} result frame(s): {e}", batch.len())),
                }
                batch.clear();
            }
            self.writing.store(false, Ordering::SeqCst);
            if self.head.load(Ordering::SeqCst).is_null() {
                return;
            }
        }
    }
}

/// Moves the frames of a newest-first list into `out`, oldest first, freeing the nodes.
fn take_in_order(mut list: *mut Node, out: &mut Vec<Vec<u8>>) {
    let start = out.len();
    while !list.is_null() {
        // SAFETY: `list` was taken whole from the stack by `swap`: this thread owns every node
        // on it, each made by Box::into_raw in `post` and freed exactly once here.
        let node = unsafe { Box::from_raw(list) };
        list = node.next;
        out.push(node.frame);
    }
    out[start..].reverse();
}

impl Drop for ReplyLane {
    fn drop(&mut self) {
        let mut rest = Vec::new();
        take_in_order(*self.head.get_mut(), &mut rest);
    }
}
