//! Step 1: no inherited file descriptor survives but the ring and stderr.
//!
//! A supervisor bug or a library that forgot `O_CLOEXEC` must not hand a plugin a socket, a
//! log file or the registry database. stdin and stdout are pointed at `/dev/null` rather than
//! closed, so the lowest free fd numbers (0 and 1) are never reused by a file the host opens
//! later, which a plugin's `printf` would then write into.

use std::io;
use std::os::fd::RawFd;

use super::SandboxError;

/// Closes every fd except 0, 1, 2, `ring_fd` and `bell_fd` (the doorbell eventfd, when the
/// supervisor passed one), then reopens 0 and 1 on `/dev/null`.
pub fn sanitize(ring_fd: RawFd, bell_fd: Option<RawFd>) -> Result<(), SandboxError> {
    // SAFETY: fcntl(F_GETFD) on any integer only queries the fd table.
    if unsafe { libc::fcntl(ring_fd, libc::F_GETFD) } < 0 {
        return Err(SandboxError::RingFdMissing(ring_fd));
    }
    // Close every gap in [3, MAX] between the fds we keep.
    let mut keep: Vec<RawFd> = std::iter::once(ring_fd)
        .chain(bell_fd)
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for &fd in &keep {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)?;
    // The kept fds stay open for the life of the process; a plugin must not inherit them
    // across an exec (which seccomp forbids anyway).
    for &fd in &keep {
        // SAFETY: F_SETFD with FD_CLOEXEC only changes the flags of `fd` (or fails with EBADF
        // for a bell fd the supervisor did not actually pass, which is harmless).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }

    let null = c"/dev/null";
    // SAFETY: `null` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(SandboxError::DevNull {
            fd: 0,
            source: io::Error::last_os_error(),
        });
    }
    for target in [0, 1] {
        if fd == target {
            continue;
        }
        // SAFETY: both fds are open (fd just opened; dup2 replaces `target` atomically
        // whether or not it was open). dup2 clears CLOEXEC on the new fd, as wanted.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(SandboxError::DevNull {
                fd: target,
                source: io::Error::last_os_error(),
            });
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours, opened above and not used after this.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), SandboxError> {
    // SAFETY: close_range takes integers only; it closes fds this process owns, and nothing
    // in this process holds a borrowed fd in that range at this point (start-up, one thread;
    // the ring is outside the range).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(SandboxError::CloseFds(err));
    }
    // Kernels before 5.9: walk /proc/self/fd. Collect first, since closing while the
    // directory stream is open would close the stream's own fd.
    let fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map_err(SandboxError::CloseFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first && fd <= last)
        .collect();
    for fd in fds {
        // SAFETY: as above; EBADF for the directory stream's fd (already closed) is harmless.
        unsafe { libc::close(fd as i32) };
    }
    Ok(())
}
