//! Step 1: no inherited file descriptor survives but the ring and stderr.
//!
//! A supervisor bug or a library that forgot `O_CLOEXEC` must not hand a plugin a socket, a
//! log file or the registry database. stdin and stdout are pointed at `/dev/null` rather than
//! closed, so the lowest free fd numbers (0 and 1) are never reused by a file the host opens
//! later, which a plugin's `printf` would then write into.

use std::io;
use std::os::fd::RawFd;

use super::SandboxError;

/// Closes every fd except 0, 1, 2 and `ring_fd`, then reopens 0 and 1 on `/dev/null`.
pub fn sanitize(ring_fd: RawFd) -> Result<(), SandboxError> {
    // SAFETY: fcntl(F_GETFD) on any integer only queries the fd table.
    if unsafe { libc::fcntl(ring_fd, libc::F_GETFD) } < 0 {
        return Err(SandboxError::RingFdMissing(ring_fd));
    }
    // Close everything in [3, ring_fd) and (ring_fd, MAX].
    if ring_fd > 3 {
        close_range(3, (ring_fd - 1) as u32)?;
    }
    close_range((ring_fd.max(2) + 1) as u32, u32::MAX)?;
    // The ring fd stays open for the life of the process; a plugin must not inherit it
    // across an exec (which seccomp forbids anyway).
    // SAFETY: ring_fd is open (checked above); F_SETFD with FD_CLOEXEC only changes its flags.
    unsafe { libc::fcntl(ring_fd, libc::F_SETFD, libc::FD_CLOEXEC) };

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
