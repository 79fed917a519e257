//! A worker thread's reused buffer for the copy of a plugin's reply.
//!
//! The native engine copies every reply out of the plugin's memory before it checks it (the
//! plugin could still change its own buffer); a lane thread encodes that copy into its result
//! frame and is then done with it. Handing the copy back here saves an allocation and a free
//! per call on that path (docs/benchmarks.md, "Lanes: fifth pass"). Replies that leave through
//! the control ring keep their buffer (it becomes the frame), so those calls allocate as before.

use std::cell::Cell;

/// Larger buffers are freed rather than kept: a thread holds at most this much for replies
/// (a lane carries frames up to half of its 64 KiB default anyway).
const KEEP_BYTES: usize = 64 << 10;

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// `bytes` copied into this thread's spare buffer (or a new one).
pub fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let mut v = SPARE.try_with(Cell::take).unwrap_or_default();
    v.clear();
    v.extend_from_slice(bytes);
    v
}

/// Gives a reply's buffer back once it has been encoded into a frame.
pub fn recycle(mut v: Vec<u8>) {
    if v.capacity() <= KEEP_BYTES {
        v.clear();
        let _ = SPARE.try_with(|s| s.set(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_is_reused_and_a_large_one_is_not_kept() {
        let v = copy_of(b"first reply");
        let ptr = v.as_ptr();
        recycle(v);
        let w = copy_of(b"second");
        assert_eq!((w.as_ptr(), &w[..]), (ptr, &b"second"[..]));
        recycle(vec![0; KEEP_BYTES + 1]);
        let x = copy_of(b"x");
        assert!(x.capacity() <= KEEP_BYTES);
        assert_eq!(x, b"x");
    }
}
