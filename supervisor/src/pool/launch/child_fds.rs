//! The host's descriptor layout, set up in the child between `clone3` and `execve`:
//! 0 and 1 on `/dev/null`, 2 the stderr pipe, 3 the ring memfd, 4 the doorbell eventfd.
//!
//! The sources are whatever numbers the daemon's descriptors happen to have, and any of them
//! can sit on a target number (a daemon started with fds 0-4 closed gets its ring, bell or
//! error pipe there). A `dup2` onto a number that is another source still to be used would
//! destroy it: the ring's copy onto 3 would replace an eventfd at 3, the bell's onto 4 an
//! error pipe at 4 (an `execve` failure then goes unreported and the parent takes the dead
//! child for a host). So every source below 5 first moves above 4, and only then do the
//! `dup2`s run: no target can be a source any more, in any order.

use std::os::fd::RawFd;

/// The first descriptor number that is no target.
const ABOVE_TARGETS: RawFd = 5;

/// The daemon-side descriptors a host is started with.
#[derive(Clone, Copy)]
pub(super) struct ChildFds {
    pub devnull: RawFd,
    pub stderr: RawFd,
    pub ring: RawFd,
    /// -1: none.
    pub bell: RawFd,
    /// The write end of the CLOEXEC pipe that reports an `execve` failure.
    pub err: RawFd,
}

impl ChildFds {
    /// Copies every source that sits on 0..=4 to a number above 4 (CLOEXEC, like the
    /// originals). On failure returns `None` with `errno` set.
    ///
    /// # Safety
    /// Call only in the child between `clone3` and `execve` (it changes the fd table and
    /// makes only async-signal-safe calls).
    pub(super) unsafe fn lifted(self) -> Option<ChildFds> {
        let lift = |fd: RawFd| -> Option<RawFd> {
            if !(0..ABOVE_TARGETS).contains(&fd) {
                return Some(fd);
            }
            // SAFETY: fcntl with integers only; on success the copy is a new descriptor.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, ABOVE_TARGETS) };
            (copy >= 0).then_some(copy)
        };
        Some(ChildFds {
            devnull: lift(self.devnull)?,
            stderr: lift(self.stderr)?,
            ring: lift(self.ring)?,
            bell: lift(self.bell)?,
            err: lift(self.err)?,
        })
    }

    /// Puts the (lifted) sources on 0-4. `dup2` clears CLOEXEC on each copy, so they survive
    /// the `execve`. On failure returns `false` with `errno` set.
    ///
    /// # Safety
    /// As [`ChildFds::lifted`], whose result this must be (no source below 5).
    pub(super) unsafe fn place(&self) -> bool {
        let mut pairs = [
            (self.devnull, 0),
            (self.devnull, 1),
            (self.stderr, 2),
            (self.ring, 3),
            (self.bell, 4),
        ]
        .into_iter();
        // SAFETY: dup2 with integers only; each target is replaced atomically.
        pairs.all(|(src, dst)| src < 0 && dst == 4 || unsafe { libc::dup2(src, dst) } == dst)
    }
}

#[cfg(test)]
mod tests {
    //! Each case runs in a forked child of the test process, which rearranges its own fd
    //! table so that the daemon-side sources land on the target numbers, calls the real
    //! `launch`, and writes what it saw to a pipe.

    use super::super::{LaunchSpec, launch, reap};
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Runs `case` in a forked child; returns its report (or the panic's message).
    fn in_child(case: fn() -> String) -> String {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into a live [i32; 2].
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fork in a test process; the child runs `case` (glibc's fork leaves malloc
        // usable in the child) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: (child) moves the pipe's write end out of 0-4 and closes the read end;
            // integers only.
            let w = unsafe {
                libc::close(fds[0]);
                libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 100)
            };
            // SAFETY: the original write end is ours and no longer used.
            unsafe { libc::close(fds[1]) };
            let out = std::panic::catch_unwind(case)
                .unwrap_or_else(|_| "the case panicked (see stderr)".to_string());
            // SAFETY: writes the report's bytes to the pipe, then leaves without the test
            // harness's atexit work.
            unsafe {
                libc::write(w, out.as_ptr().cast(), out.len());
                libc::_exit(0)
            }
        }
        // SAFETY: fds[1] is the write end, unused in the parent.
        unsafe { libc::close(fds[1]) };
        // SAFETY: fds[0] is an open pipe end owned by nothing else from here on.
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut out = String::new();
        r.read_to_string(&mut out).expect("read the child's report");
        let mut status = 0;
        // SAFETY: waits for our own child, writing into a live i32.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        out
    }

    /// A memfd and an eventfd (as the pool makes them) on exactly `ring` and `bell`.
    fn ring_and_bell_on(ring: i32, bell: i32) -> (OwnedFd, OwnedFd) {
        // SAFETY: memfd_create/eventfd/fcntl/dup3/close with integers and a literal; the
        // results are new descriptors owned by nothing else. Both first go to scratch numbers
        // (60+) so that neither copy onto a target can replace the other.
        unsafe {
            let m = libc::memfd_create(c"ring".as_ptr(), libc::MFD_CLOEXEC);
            let e = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            assert!(m >= 0 && e >= 0, "memfd/eventfd");
            let (m2, e2) = (
                libc::fcntl(m, libc::F_DUPFD_CLOEXEC, 60),
                libc::fcntl(e, libc::F_DUPFD_CLOEXEC, 60),
            );
            libc::close(m);
            libc::close(e);
            for (src, dst) in [(m2, ring), (e2, bell)] {
                assert_eq!(libc::dup3(src, dst, libc::O_CLOEXEC), dst);
                libc::close(src);
            }
            (OwnedFd::from_raw_fd(ring), OwnedFd::from_raw_fd(bell))
        }
    }

    fn spec(program: &str, args: &[&str], ring: &OwnedFd, bell: &OwnedFd) -> LaunchSpec {
        LaunchSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ring_fd: ring.as_raw_fd(),
            bell_fd: Some(bell.as_raw_fd()),
            namespaces: false,
            tmp_dir: None,
        }
    }

    /// What the host's fds 3 and 4 point at, as `readlink` prints them on its stderr.
    fn host_fds_with(ring: i32, bell: i32, close_first: &[i32]) -> String {
        for fd in [3, 4].iter().chain(close_first) {
            // SAFETY: closes descriptors of this forked child only (the harness's copies).
            unsafe { libc::close(*fd) };
        }
        let (r, b) = ring_and_bell_on(ring, bell);
        let s = spec(
            "/bin/sh",
            &["-c", "readlink /proc/self/fd/3 /proc/self/fd/4 >&2"],
            &r,
            &b,
        );
        let l = match launch(&s) {
            Ok(l) => l,
            Err(e) => return format!("launch failed: {e}"),
        };
        let mut err = std::fs::File::from(l.stderr);
        let mut out = String::new();
        let _ = err.read_to_string(&mut out);
        reap(l.pid);
        out
    }

    fn assert_ring_on_3_bell_on_4(out: &str) {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "host output: {out:?}");
        assert!(lines[0].starts_with("/memfd:ring"), "fd 3: {out:?}");
        assert_eq!(lines[1], "anon_inode:[eventfd]", "fd 4: {out:?}");
    }

    #[test]
    fn a_ring_on_4_and_a_bell_on_3_still_land_on_3_and_4() {
        let out = in_child(|| host_fds_with(4, 3, &[]));
        assert_ring_on_3_bell_on_4(&out);
    }

    #[test]
    fn the_error_pipe_and_dev_null_on_low_numbers_do_not_disturb_the_layout() {
        // With 0 and 1 closed, /dev/null opens as 0 and the error pipe as 1 and a high fd.
        let out = in_child(|| host_fds_with(40, 41, &[0, 1]));
        assert_ring_on_3_bell_on_4(&out);
    }

    #[test]
    fn an_exec_failure_is_reported_when_the_error_pipe_sits_on_4() {
        // Holes at 0, 3 and 4: /dev/null opens as 0, the error pipe as 3 (read) and 4
        // (write), where the bell's dup2 used to replace it, so the failure went unreported.
        let out = in_child(|| {
            for fd in [3, 4] {
                // SAFETY: closes descriptors of this forked child only.
                unsafe { libc::close(fd) };
            }
            let (r, b) = ring_and_bell_on(40, 41);
            // SAFETY: as above.
            unsafe { libc::close(0) };
            match launch(&spec("/nonexistent/host-runner", &[], &r, &b)) {
                Ok(l) => {
                    reap(l.pid);
                    "launch reported success for a program that does not exist".to_string()
                }
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
            }
        });
        assert_eq!(out, format!("errno {}", libc::ENOENT));
    }
}
