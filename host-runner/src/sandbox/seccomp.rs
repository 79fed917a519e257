//! Step 9: the seccomp filter (DESIGN.md section 6).
//!
//! Two filters are stacked; for each syscall the kernel applies the most severe verdict:
//!
//! 1. A hand-written prelude: any architecture but the native one kills the process
//!    (seccompiler's own arch check does too); a syscall number with the x32 bit
//!    (`0x40000000`) set raises **SIGSYS** (`SECCOMP_RET_TRAP`: the crash handler records the
//!    worker and message, then the host dies by SIGSYS), because seccompiler compares plain
//!    numbers and would let `0x40000000 | execve` through; `clone3` returns **ENOSYS** so glibc
//!    falls back to `clone`, whose flags a filter can inspect (clone3 passes them in memory).
//! 2. The deny list, built with seccompiler: every listed call fails with **EPERM**, so a plugin
//!    sees an ordinary error and the host carries on:
//!    - debugging and other processes' memory: `ptrace`, `process_vm_readv/writev`, `kcmp`,
//!      `pidfd_getfd`;
//!    - mounts and roots: `mount`, `umount2`, `pivot_root`, `chroot`, and the new mount API
//!      (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`,
//!      `mount_setattr`), `open_by_handle_at`;
//!    - kernel state: `kexec_load`, `kexec_file_load`, `init_module`, `finit_module`,
//!      `delete_module`, `bpf`, `perf_event_open`, `reboot`, `swapon`, `swapoff`, `acct`,
//!      `syslog`, `iopl`, `ioperm`, `quotactl`, clocks (`settimeofday`, `clock_settime`,
//!      `clock_adjtime`, `adjtimex`), `sethostname`, `setdomainname`, `fanotify_init`;
//!    - keys: `keyctl`, `add_key`, `request_key`; `userfaultfd`;
//!    - namespaces after set-up: `setns`, `unshare`;
//!    - new programs and processes: `execve`, `execveat`, `fork`, `vfork`, and `clone`
//!      without `CLONE_THREAD` (threads stay allowed);
//!    - network: `socket` for every family. Plugins reach the outside only through
//!      `gateway_call`; AF_UNIX is denied too, since no engine needs it (CoreCLR's diagnostics
//!      socket is switched off by `COMPlus_EnableDiagnostics=0`). `socketpair` stays (it
//!      cannot reach anything outside the process);
//!    - `io_uring_setup/enter/register`: io_uring operations bypass seccomp entirely;
//!    - signals to other processes: `kill` and `tgkill` with a pid other than our own,
//!      `tkill`, `pidfd_send_signal`;
//!    - raising limits: `setrlimit`, and `prlimit64` with a new limit (reading stays).
//!
//! CoreCLR needs `membarrier`, `mlock`, `memfd_create`, `sched_*affinity` and
//! `get_/set_mempolicy`: none of them is listed.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

/// The x32 ABI bit of x86_64 syscall numbers.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

/// Both programs, in installation order.
pub struct Filters {
    pub prelude: BpfProgram,
    pub deny: BpfProgram,
}

/// Builds the filters for a process whose pid is `own_pid` (signals may go to it only).
pub fn build(own_pid: i32) -> Result<Filters, SandboxError> {
    Ok(Filters {
        prelude: prelude(),
        deny: deny_list(own_pid)?,
    })
}

/// Builds and installs both filters for every thread of the process.
pub fn install() -> Result<(), SandboxError> {
    let filters = build(std::process::id() as i32)?;
    apply(&filters)
}

/// Installs already-built filters (no allocation: usable in a forked child).
pub fn apply(filters: &Filters) -> Result<(), SandboxError> {
    for prog in [&filters.prelude, &filters.deny] {
        seccompiler::apply_filter_all_threads(prog)
            .map_err(|e| SandboxError::SeccompInstall(e.to_string()))?;
    }
    Ok(())
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Arch check, x32 bit -> SIGSYS, clone3 -> ENOSYS, everything else allowed (the deny list
/// decides).
fn prelude() -> BpfProgram {
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_TRAP),
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Syscalls denied whatever their arguments.
fn always_denied() -> Vec<libc::c_long> {
    use libc::*;
    let mut v = vec![
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_kcmp,
        SYS_pidfd_getfd,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        SYS_open_by_handle_at,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_syslog,
        SYS_quotactl,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_sethostname,
        SYS_setdomainname,
        SYS_fanotify_init,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_userfaultfd,
        SYS_setns,
        SYS_unshare,
        SYS_execve,
        SYS_execveat,
        SYS_socket,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_tkill,
        SYS_pidfd_send_signal,
        SYS_setrlimit,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([SYS_fork, SYS_vfork, SYS_iopl, SYS_ioperm]);
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conds).map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn deny_list(own_pid: i32) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always_denied()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();

    // clone(flags, ...): denied unless CLONE_THREAD is set (a new process, not a thread).
    let clone_thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(clone_thread),
                0,
            )
            .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?,
        ])?],
    );
    // kill(pid, sig) and tgkill(tgid, tid, sig): our own pid only (raise(), abort(), the
    // crash handler's re-raise). kill(0) or kill(-1) would reach the supervisor's group.
    let own = own_pid as u32 as u64;
    rules.insert(
        libc::SYS_kill,
        vec![rule(vec![
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, own)
                .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?,
        ])?],
    );
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, own)
                .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?,
        ])?],
    );
    // prlimit64(pid, resource, new_limit, old_limit): reading (new_limit NULL) stays allowed.
    rules.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![cond(2, SeccompCmpOp::Ne, 0)?])?],
    );

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TARGET,
    )
    .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::SeccompBuild(e.to_string()))
}

#[cfg(test)]
mod tests {
    //! Each test forks a child that installs the filter and tries the forbidden calls: the
    //! filter must never be installed in the test process itself.

    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    type Probe = fn(&mut dyn FnMut(&str, i64));

    /// Runs `probe` in a forked child under the filters; returns the child's wait status and
    /// what it wrote to the pipe.
    fn in_filtered_child(probe: Probe) -> (i32, String) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into a live [i32; 2].
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fork in a test process; the child only runs the probe (glibc's fork leaves
        // malloc usable in the child) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: fds[0] is the read end, unused in the child.
            unsafe { libc::close(fds[0]) };
            // Should the filter ever fail, keep sethostname and friends away from the machine's
            // namespaces (best effort: needs root).
            // SAFETY: unshare takes flags only; the child is single-threaded after fork.
            unsafe { libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) };
            // SAFETY: getpid has no preconditions.
            let me = unsafe { libc::getpid() };
            let filters = build(me).expect("filter builds");
            apply(&filters).expect("filter installs");
            let w = fds[1];
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
    fn forbidden_calls_fail_with_eperm_and_the_child_survives() {
        let (status, out) = in_filtered_child(|report| {
            // SAFETY: (whole probe) each call passes integers or pointers to live locals and
            // NUL-terminated literals; the filter stops them before the kernel acts.
            unsafe {
                report(
                    "socket_inet",
                    errno_of(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64),
                );
                report(
                    "socket_unix",
                    errno_of(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64),
                );
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                report(
                    "execve",
                    errno_of(
                        libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) as i64,
                    ),
                );
                let forked = libc::fork();
                if forked == 0 {
                    libc::_exit(0);
                }
                report("fork", errno_of(forked as i64));
                report("vfork_raw", errno_of(libc::syscall(libc::SYS_vfork)));
                report(
                    "ptrace",
                    errno_of(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)),
                );
                report(
                    "mount",
                    errno_of(libc::mount(
                        c"none".as_ptr(),
                        c"/mnt".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) as i64),
                );
                report("unshare", errno_of(libc::unshare(libc::CLONE_NEWNS) as i64));
                report("bpf", errno_of(libc::syscall(libc::SYS_bpf, 0, 0, 0)));
                report(
                    "io_uring_setup",
                    errno_of(libc::syscall(libc::SYS_io_uring_setup, 1, 0)),
                );
                report(
                    "kill_parent",
                    errno_of(libc::kill(libc::getppid(), 0) as i64),
                );
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
                report(
                    "prlimit_raise",
                    errno_of(
                        libc::prlimit(0, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) as i64,
                    ),
                );
                let fds = &mut [0i32; 2];
                report(
                    "socketpair",
                    errno_of(
                        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr())
                            as i64,
                    ),
                );
            }
            // Threads still work: std spawns with clone3 (ENOSYS), then clone(CLONE_THREAD).
            let t = std::thread::spawn(|| 7).join().unwrap_or(0);
            report("thread", t);
        });
        assert!(
            libc::WIFEXITED(status),
            "child died: status {status:#x}, output {out}"
        );
        let r = results(&out);
        let eperm = -(libc::EPERM as i64);
        for name in [
            "socket_inet",
            "socket_unix",
            "execve",
            "fork",
            "vfork_raw",
            "ptrace",
            "mount",
            "unshare",
            "bpf",
            "io_uring_setup",
            "kill_parent",
            "prlimit_raise",
        ] {
            assert_eq!(r.get(name), Some(&eperm), "{name}: {out}");
        }
        assert_eq!(r.get("clone3"), Some(&-(libc::ENOSYS as i64)), "{out}");
        assert_eq!(r.get("kill_self"), Some(&0), "{out}");
        assert_eq!(r.get("prlimit_read"), Some(&0), "{out}");
        assert_eq!(r.get("socketpair"), Some(&0), "{out}");
        assert_eq!(r.get("thread"), Some(&7), "{out}");
    }

    /// Calls whose zero-argument form could change the machine if the filter failed to stop
    /// them (unload a kexec kernel, stop process accounting, fork the probe); they are covered
    /// by name in the test above or are in the same unconditional list.
    fn unsafe_to_probe(nr: libc::c_long) -> bool {
        let mut skip = vec![
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_acct,
            libc::SYS_reboot,
        ];
        #[cfg(target_arch = "x86_64")]
        skip.extend([libc::SYS_fork, libc::SYS_vfork]);
        skip.contains(&nr)
    }

    #[test]
    fn every_unconditionally_denied_syscall_returns_eperm() {
        let (status, out) = in_filtered_child(|report| {
            for nr in always_denied() {
                if unsafe_to_probe(nr) {
                    continue;
                }
                // SAFETY: a raw syscall with zero arguments; the filter answers EPERM before the
                // kernel looks at them (and a zero/NULL argument is harmless for these calls
                // if it did not: EFAULT, EINVAL or a no-op).
                let rc = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
                report(&format!("nr{nr}"), errno_of(rc));
            }
        });
        assert!(libc::WIFEXITED(status), "child died: {status:#x}, {out}");
        let r = results(&out);
        let probed: Vec<_> = always_denied()
            .into_iter()
            .filter(|nr| !unsafe_to_probe(*nr))
            .collect();
        assert_eq!(r.len(), probed.len(), "{out}");
        for nr in probed {
            assert_eq!(
                r.get(&format!("nr{nr}")),
                Some(&-(libc::EPERM as i64)),
                "syscall {nr}: {out}"
            );
        }
    }

    #[test]
    fn an_x32_syscall_number_kills_the_child_with_sigsys() {
        let (status, out) = in_filtered_child(|report| {
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
}
