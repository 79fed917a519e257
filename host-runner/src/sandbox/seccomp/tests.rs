//! Each probe runs in a forked child that installs the filters: they must never be
//! installed in the test process itself.

use super::*;
use std::io::Read;
use std::os::fd::{FromRawFd, RawFd};

type Probe = fn(&mut dyn FnMut(&str, i64));

/// Runs `probe` in a forked child under `profile`'s filters, with a sealed memfd as fd 3
/// (the ring's place) and an eventfd as fd 4 (the doorbell's); returns the child's wait status and what it wrote to the pipe.
fn in_filtered_child(profile: Profile, probe: Probe) -> (i32, String) {
    in_filtered_child_guarding(profile, GuardedFds::HOST, probe)
}

/// [`in_filtered_child`] with the filter guarding `guarded` (fds 3 and 4 are set up the
/// same way whatever it says).
fn in_filtered_child_guarding(
    profile: Profile,
    guarded: GuardedFds,
    probe: Probe,
) -> (i32, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into a live [i32; 2].
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test process; the child only runs the probe (glibc's fork leaves
    // malloc usable in the child) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: (whole child set-up) integer-only calls and NUL-terminated literals;
        // fds[0] is the read end, unused in the child.
        unsafe {
            libc::close(fds[0]);
            // Reports go to fd 2, out of the way of the set-up below (the pipe may be on
            // 3 or 4) and of the probes that close or replace fds 3 and up.
            libc::dup2(fds[1], 2);
            // Should the filter ever fail, keep sethostname and friends away from the
            // machine's namespaces (best effort: needs root).
            libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWIPC);
            // stdin and stdout on /dev/null, as in a host (a probe reads stdin).
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
            let mfd = libc::memfd_create(c"ring".as_ptr(), libc::MFD_ALLOW_SEALING);
            libc::ftruncate(mfd, 8192);
            libc::fcntl(
                mfd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            );
            if mfd != RING_FD as i32 {
                libc::dup2(mfd, RING_FD as i32);
            }
            // The doorbell eventfd's place.
            let bell = libc::eventfd(0, libc::EFD_NONBLOCK);
            if bell != BELL_FD as i32 {
                libc::dup2(bell, BELL_FD as i32);
            }
        }
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let filters = build(profile, me, guarded).expect("filter builds");
        apply(&filters).expect("filter installs");
        let w = 2;
        let mut report = |name: &str, result: i64| {
            let line = format!("{name}={result}\n");
            // SAFETY: writes `line`'s bytes from a live String to the pipe's write end.
            unsafe { libc::write(w, line.as_ptr().cast(), line.len()) };
        };
        probe(&mut report);
        // SAFETY: _exit has no preconditions; it skips the test harness's atexit work.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: fds[1] is the write end, unused in the parent.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is an open pipe end owned by nothing else from here on.
    let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut out = String::new();
    reader.read_to_string(&mut out).expect("read pipe");
    let mut status = 0;
    // SAFETY: waits for our own child, writing the status into a live i32.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    (status, out)
}

/// -errno of a failed call, or its non-negative result.
fn errno_of(rc: i64) -> i64 {
    if rc < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        rc
    }
}

fn results(out: &str) -> BTreeMap<String, i64> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn what_the_engines_need_is_allowed() {
    for profile in [Profile::Native, Profile::DotNet, Profile::Python] {
        let (status, out) = in_filtered_child(profile, |report| {
            // SAFETY: (whole probe) each call passes integers or pointers to live locals.
            unsafe {
                report("kill_self", errno_of(libc::kill(libc::getpid(), 0) as i64));
                report("clone3", errno_of(libc::syscall(libc::SYS_clone3, 0, 0)));
                let mut old = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                report(
                    "prlimit_read",
                    errno_of(
                        libc::prlimit(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) as i64,
                    ),
                );
                let m = libc::memfd_create(c"scratch".as_ptr(), 0);
                report("memfd", errno_of(m as i64).min(1));
                report("ftruncate_other", errno_of(libc::ftruncate(m, 4096) as i64));
                report(
                    "fcntl_ring_getfd",
                    errno_of(libc::fcntl(3, libc::F_GETFD) as i64),
                );
                report(
                    "fcntl_bell_getfl",
                    errno_of(libc::fcntl(4, libc::F_GETFL) as i64).min(0),
                );
                report(
                    "fcntl_bell_getfd",
                    errno_of(libc::fcntl(4, libc::F_GETFD) as i64).min(0),
                );
                // Closing and replacing fds other than 3 and 4 stays allowed.
                let p = libc::memfd_create(c"other".as_ptr(), 0);
                report("dup2_onto_other", errno_of(libc::dup2(m, p) as i64).min(0));
                report(
                    "dup3_onto_other",
                    errno_of(libc::dup3(m, p, 0) as i64).min(0),
                );
                report("close_other", errno_of(libc::close(p) as i64));
                report(
                    "close_range_high",
                    errno_of(libc::syscall(libc::SYS_close_range, 200, 300, 0)),
                );
                // stdio may be used and duplicated (.NET's Console dups 0-2), only
                // never closed nor replaced; the ring may be read.
                let line = b"probe line on stderr\n";
                report(
                    "write_stderr",
                    errno_of(libc::write(2, line.as_ptr().cast(), line.len()) as i64),
                );
                let d = libc::dup(2);
                report("dup_stderr", errno_of(d as i64).min(0));
                report("close_dup_of_stderr", errno_of(libc::close(d) as i64));
                let d = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 10);
                report("fcntl_dupfd_stdout", errno_of(d as i64).min(0));
                report("dup2_from_stderr", errno_of(libc::dup2(2, d) as i64).min(0));
                report("close_dupfd_of_stdout", errno_of(libc::close(d) as i64));
                let mut b = [0u8; 8];
                report(
                    "pread_ring",
                    errno_of(libc::pread(3, b.as_mut_ptr().cast(), b.len(), 0) as i64),
                );
                report(
                    "read_stdin",
                    errno_of(libc::read(0, b.as_mut_ptr().cast(), b.len()) as i64),
                );
                // What CPython and CoreCLR do to close "every other fd"; runs last among
                // the fd probes (it closes the scratch memfd too).
                report(
                    "close_range_above",
                    errno_of(libc::syscall(
                        libc::SYS_close_range,
                        5,
                        libc::c_uint::MAX,
                        0,
                    )),
                );
                report(
                    "prctl_name",
                    errno_of(libc::prctl(libc::PR_SET_NAME, c"probe".as_ptr()) as i64),
                );
                report(
                    "personality_read",
                    errno_of(libc::personality(0xffff_ffff) as i64).min(0),
                );
                let mut act: libc::sigaction = std::mem::zeroed();
                report(
                    "sigaction_read_segv",
                    errno_of(libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut act) as i64),
                );
                act.sa_sigaction = libc::SIG_IGN;
                report(
                    "sigaction_usr1",
                    errno_of(libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()) as i64),
                );
                report(
                    "sigaction_set_segv",
                    errno_of(libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut()) as i64),
                );
            }
            // Threads still work: std spawns with clone3 (ENOSYS), then clone(CLONE_THREAD).
            let t = std::thread::spawn(|| 7).join().unwrap_or(0);
            report("thread", t);
        });
        assert!(
            libc::WIFEXITED(status),
            "{profile:?}: child died: status {status:#x}, output {out}"
        );
        let r = results(&out);
        for (name, want) in [
            ("kill_self", 0),
            ("clone3", -(libc::ENOSYS as i64)),
            ("prlimit_read", 0),
            ("memfd", 1),
            ("ftruncate_other", 0),
            ("fcntl_ring_getfd", 0),
            ("fcntl_bell_getfl", 0),
            ("fcntl_bell_getfd", 0),
            ("dup2_onto_other", 0),
            ("dup3_onto_other", 0),
            ("close_other", 0),
            ("close_range_high", 0),
            ("write_stderr", 21),
            ("dup_stderr", 0),
            ("close_dup_of_stderr", 0),
            ("fcntl_dupfd_stdout", 0),
            ("dup2_from_stderr", 0),
            ("close_dupfd_of_stdout", 0),
            ("pread_ring", 8),
            ("read_stdin", 0),
            ("close_range_above", 0),
            ("prctl_name", 0),
            ("personality_read", 0),
            ("sigaction_read_segv", 0),
            ("sigaction_usr1", 0),
            ("thread", 7),
        ] {
            assert_eq!(r.get(name), Some(&want), "{profile:?} {name}: {out}");
        }
        // Only the native profile guards the crash handler (CoreCLR installs its own).
        let want = match profile {
            Profile::Native | Profile::Python => -(libc::EPERM as i64),
            Profile::DotNet => 0,
        };
        assert_eq!(
            r.get("sigaction_set_segv"),
            Some(&want),
            "{profile:?}: {out}"
        );
    }
}

/// Calls the sandbox must refuse by ending the process, by name.
const FORBIDDEN: &[&str] = &[
    "socket_inet",
    "socket_unix",
    "socket_netlink",
    "socketpair",
    "execve",
    "fork",
    "clone_thread_newuser",
    "ptrace",
    "process_vm_writev",
    "mount",
    "unshare",
    "setns",
    "bpf",
    "io_uring_setup",
    "userfaultfd",
    "perf_event_open",
    "keyctl",
    "kill_parent",
    "kill_group",
    "kill_all",
    "kill_init",
    "tgkill_parent",
    "tkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_send_signal",
    "tiocsti",
    "personality",
    "prctl_pdeathsig",
    "prctl_dumpable",
    "ftruncate_ring",
    "fallocate_ring",
    "dup_ring",
    "fcntl_dupfd_ring",
    "close_bell",
    "close_ring",
    "dup2_onto_bell",
    "dup2_onto_ring",
    "dup3_onto_ring",
    "dup3_onto_bell",
    "dup2_from_bell",
    "dup_bell",
    "fcntl_dupfd_bell",
    "fcntl_setfl_bell",
    "close_range_over_bell",
    "close_range_over_ring",
    "close_range_from_3",
    "close_range_all",
    "close_stderr",
    "close_stdout",
    "close_stdin",
    "dup2_onto_stderr",
    "dup3_onto_stderr",
    "dup2_onto_stdin",
    "close_range_over_stderr",
    "close_range_over_stdio",
    "read_bell",
    "readv_bell",
    "pread_bell",
    "preadv_bell",
    "preadv2_bell",
    "prlimit_parent",
    "sethostname",
    "seccomp",
];

/// Makes forbidden call `name`; returns its result should the filter let it through.
fn attempt(name: &str) -> i64 {
    // SAFETY: (every arm) raw syscalls with integer arguments or pointers to live locals
    // and literals; the filter traps them before the kernel acts on them, and if it did
    // not, each is harmless in a throw-away child (a forked child exits, zero-size or
    // NULL arguments fail with EFAULT or EINVAL).
    unsafe {
        match name {
            "socket_inet" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            "socket_unix" => libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64,
            "socket_netlink" => libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) as i64,
            "socketpair" => {
                let mut f = [0; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, f.as_mut_ptr()) as i64
            }
            "execve" => {
                let a = [c"/bin/true".as_ptr(), std::ptr::null()];
                let e = [std::ptr::null()];
                libc::execve(c"/bin/true".as_ptr(), a.as_ptr(), e.as_ptr()) as i64
            }
            "fork" => libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
            "clone_thread_newuser" => libc::syscall(
                libc::SYS_clone,
                libc::CLONE_THREAD | libc::CLONE_NEWUSER,
                0,
                0,
                0,
                0,
            ),
            "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0),
            "process_vm_writev" => {
                libc::syscall(libc::SYS_process_vm_writev, libc::getppid(), 0, 0, 0, 0, 0)
            }
            "mount" => libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0),
            "unshare" => libc::unshare(libc::CLONE_NEWNS) as i64,
            "setns" => libc::syscall(libc::SYS_setns, 0, 0),
            "bpf" => libc::syscall(libc::SYS_bpf, 0, 0, 0),
            "io_uring_setup" => libc::syscall(libc::SYS_io_uring_setup, 1, 0),
            "userfaultfd" => libc::syscall(libc::SYS_userfaultfd, 0),
            "perf_event_open" => libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0),
            "keyctl" => libc::syscall(libc::SYS_keyctl, 0, 0),
            "kill_parent" => libc::kill(libc::getppid(), 0) as i64,
            "kill_group" => libc::kill(0, 0) as i64,
            "kill_all" => libc::kill(-1, 0) as i64,
            "kill_init" => libc::kill(1, 0) as i64,
            "tgkill_parent" => libc::syscall(libc::SYS_tgkill, libc::getppid(), libc::getppid(), 0),
            "tkill" => libc::syscall(libc::SYS_tkill, libc::getppid(), 0),
            "rt_sigqueueinfo" => libc::syscall(libc::SYS_rt_sigqueueinfo, libc::getppid(), 0, 0),
            "rt_tgsigqueueinfo" => libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                libc::getppid(),
                libc::getppid(),
                0,
                0,
            ),
            "pidfd_send_signal" => libc::syscall(libc::SYS_pidfd_send_signal, 0, 0, 0, 0),
            "tiocsti" => libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) as i64,
            "personality" => libc::personality(0x0040000) as i64,
            "prctl_pdeathsig" => libc::prctl(libc::PR_SET_PDEATHSIG, 0) as i64,
            "prctl_dumpable" => libc::prctl(libc::PR_SET_DUMPABLE, 1) as i64,
            "ftruncate_ring" => libc::ftruncate(RING_FD as i32, 0) as i64,
            "fallocate_ring" => libc::fallocate(RING_FD as i32, 0, 0, 1 << 20) as i64,
            "dup_ring" => libc::dup(RING_FD as i32) as i64,
            "fcntl_dupfd_ring" => libc::fcntl(RING_FD as i32, libc::F_DUPFD_CLOEXEC, 10) as i64,
            "close_bell" => libc::close(BELL_FD as i32) as i64,
            "close_ring" => libc::close(RING_FD as i32) as i64,
            "dup2_onto_bell" => libc::dup2(0, BELL_FD as i32) as i64,
            "dup2_onto_ring" => libc::dup2(0, RING_FD as i32) as i64,
            "dup3_onto_ring" => libc::dup3(0, RING_FD as i32, libc::O_CLOEXEC) as i64,
            "dup3_onto_bell" => libc::dup3(0, BELL_FD as i32, 0) as i64,
            "dup2_from_bell" => libc::dup2(BELL_FD as i32, 10) as i64,
            "dup_bell" => libc::dup(BELL_FD as i32) as i64,
            "fcntl_dupfd_bell" => libc::fcntl(BELL_FD as i32, libc::F_DUPFD, 10) as i64,
            // Clearing O_NONBLOCK on the description the supervisor reads.
            "fcntl_setfl_bell" => libc::fcntl(BELL_FD as i32, libc::F_SETFL, 0) as i64,
            "close_range_over_bell" => libc::syscall(libc::SYS_close_range, 4, 4, 0),
            "close_range_over_ring" => libc::syscall(libc::SYS_close_range, 2, 3, 0),
            "close_range_from_3" => libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0),
            "close_range_all" => libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0),
            // stdio: the log pipe (2) and the /dev/null placeholders (0, 1).
            "close_stderr" => libc::close(2) as i64,
            "close_stdout" => libc::close(1) as i64,
            "close_stdin" => libc::close(0) as i64,
            "dup2_onto_stderr" => libc::dup2(0, 2) as i64,
            "dup3_onto_stderr" => libc::dup3(0, 2, libc::O_CLOEXEC) as i64,
            "dup2_onto_stdin" => libc::dup2(2, 0) as i64,
            "close_range_over_stderr" => libc::syscall(libc::SYS_close_range, 2, 2, 0),
            "close_range_over_stdio" => libc::syscall(libc::SYS_close_range, 0, 1, 0),
            // Reading the doorbell would consume the supervisor's wake-ups.
            "read_bell" => {
                let mut b = [0u8; 8];
                libc::read(BELL_FD as i32, b.as_mut_ptr().cast(), b.len()) as i64
            }
            "readv_bell" => {
                let mut b = [0u8; 8];
                let v = libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                };
                libc::readv(BELL_FD as i32, &v, 1) as i64
            }
            "pread_bell" => {
                let mut b = [0u8; 8];
                libc::pread(BELL_FD as i32, b.as_mut_ptr().cast(), b.len(), 0) as i64
            }
            "preadv_bell" => {
                let mut b = [0u8; 8];
                let v = libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                };
                libc::preadv(BELL_FD as i32, &v, 1, 0) as i64
            }
            "preadv2_bell" => {
                let mut b = [0u8; 8];
                let v = libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                };
                libc::syscall(libc::SYS_preadv2, BELL_FD as i32, &v, 1, -1i64, 0)
            }
            "prlimit_parent" => libc::syscall(
                libc::SYS_prlimit64,
                libc::getppid(),
                libc::RLIMIT_NOFILE,
                0,
                0,
            ),
            "sethostname" => libc::syscall(libc::SYS_sethostname, 0, 0),
            "seccomp" => libc::syscall(libc::SYS_seccomp, 0, 0, 0),
            _ => 0,
        }
    }
}

#[test]
fn every_forbidden_call_ends_the_process_with_sigsys() {
    // Every call is tried; the failures are listed together.
    let mut escaped = Vec::new();
    for profile in [Profile::Native, Profile::DotNet, Profile::Python] {
        for name in FORBIDDEN {
            // asyncio's self-pipe: the one socket call the Python profile allows
            // (`python_allows_only_a_unix_socketpair` checks the other families).
            if profile == Profile::Python && *name == "socketpair" {
                continue;
            }
            // A fn pointer cannot capture; pass the name through a static slot (the
            // forked child sees the parent's value).
            static CALL: std::sync::Mutex<&str> = std::sync::Mutex::new("");
            *CALL.lock().unwrap() = name;
            let (status, out) = in_filtered_child(profile, |report| {
                report("before", 1);
                let name = CALL.lock().map(|c| *c).unwrap_or("");
                report("after", errno_of(attempt(name)));
            });
            let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS;
            if !killed || !out.contains("before=1") || out.contains("after") {
                escaped.push(format!(
                    "{profile:?} {name}: not killed by SIGSYS before the call returned \
                     (status {status:#x}): {}",
                    out.trim().replace('\n', " ")
                ));
            }
        }
    }
    assert!(escaped.is_empty(), "\n{}", escaped.join("\n"));
}

#[test]
fn an_x32_syscall_number_kills_the_child_with_sigsys() {
    let (status, out) = in_filtered_child(Profile::Native, |report| {
        report("before", 1);
        // SAFETY: getpid through the x32 number; the filter traps it before the kernel
        // looks at it.
        let rc = unsafe { libc::syscall(X32_SYSCALL_BIT as i64 | libc::SYS_getpid) };
        report("after", rc);
    });
    assert!(libc::WIFSIGNALED(status), "child survived: {out}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{out}");
    assert!(out.contains("before=1") && !out.contains("after"), "{out}");
}

#[test]
fn the_lists_name_what_the_filters_allow() {
    assert!(is_listed(Profile::Native, libc::SYS_futex));
    assert!(!is_listed(Profile::Python, libc::SYS_socket));
    assert!(is_listed(Profile::Python, libc::SYS_socketpair));
    assert!(!is_listed(Profile::Native, libc::SYS_socketpair));
    assert!(!is_listed(Profile::Native, libc::SYS_socket));
    assert!(!is_listed(Profile::DotNet, libc::SYS_execve));
    assert!(is_listed(Profile::DotNet, libc::SYS_membarrier));
}

#[test]
fn python_allows_only_a_unix_socketpair() {
    let (status, out) = in_filtered_child(Profile::Python, |report| {
        let mut f = [0; 2];
        // SAFETY: socketpair writes two ints into the live local array.
        let unix = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, f.as_mut_ptr()) };
        report("unix", errno_of(unix as i64));
        // SAFETY: as above; the filter traps this call before the kernel sees it.
        let inet = unsafe { libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, f.as_mut_ptr()) };
        report("inet", errno_of(inet as i64));
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "an AF_INET socketpair must end the host with SIGSYS (status {status:#x}): {out}"
    );
    assert!(out.contains("unix=0") && !out.contains("inet"), "{out}");
}

/// A host started without a doorbell (`--bell-fd` absent) uses fd 4 for its own files:
/// only the ring is guarded then, and a gap between guarded fds stays usable.
#[test]
fn without_a_bell_fd_4_is_an_ordinary_descriptor() {
    let no_bell = GuardedFds {
        ring: RING_FD as RawFd,
        bell: None,
    };
    let (status, out) = in_filtered_child_guarding(Profile::Native, no_bell, |report| {
        // SAFETY: close/close_range with integers only, in the throw-away child.
        unsafe {
            report("close_4", errno_of(libc::close(4) as i64));
            report(
                "close_range_4_9",
                errno_of(libc::syscall(libc::SYS_close_range, 4, 9, 0)),
            );
            report("before_ring", 1);
            report("close_ring", errno_of(libc::close(3) as i64));
        }
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "closing the ring must still end the child (status {status:#x}): {out}"
    );
    let r = results(&out);
    assert_eq!(r.get("close_4"), Some(&0), "{out}");
    assert_eq!(r.get("close_range_4_9"), Some(&0), "{out}");
    assert!(
        out.contains("before_ring=1") && !out.contains("close_ring"),
        "{out}"
    );

    // A ring and a bell apart (7 and 9): 8 lies in a gap and may be closed.
    let apart = GuardedFds {
        ring: 7,
        bell: Some(9),
    };
    let (status, out) = in_filtered_child_guarding(Profile::Native, apart, |report| {
        // SAFETY: as above.
        unsafe {
            report(
                "close_range_8",
                errno_of(libc::syscall(libc::SYS_close_range, 8, 8, 0)),
            );
            report(
                "close_range_3_6",
                errno_of(libc::syscall(libc::SYS_close_range, 3, 6, 0)),
            );
            report("before", 1);
            report(
                "close_range_8_9",
                errno_of(libc::syscall(libc::SYS_close_range, 8, 9, 0)),
            );
        }
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "a range over the bell at 9 must end the child (status {status:#x}): {out}"
    );
    let r = results(&out);
    assert_eq!(r.get("close_range_8"), Some(&0), "{out}");
    assert_eq!(r.get("close_range_3_6"), Some(&0), "{out}");
    assert!(
        out.contains("before=1") && !out.contains("close_range_8_9"),
        "{out}"
    );
}
