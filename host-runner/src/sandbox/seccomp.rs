//! Step 9: the seccomp filter (DESIGN.md section 6): an **allow-list**, one profile per engine.
//!
//! Two filters are stacked; for each syscall the kernel applies the most severe verdict
//! (KILL > TRAP > ERRNO > ALLOW):
//!
//! 1. A hand-written prelude: any architecture but the native one kills the process; a syscall
//!    number with the x32 bit (`0x40000000`) set raises **SIGSYS** (seccompiler compares plain
//!    numbers and would let `0x40000000 | execve` through); `clone3` returns **ENOSYS** so
//!    glibc falls back to `clone`, whose flags a filter can inspect (clone3 passes them in
//!    memory); for the native profile, `rt_sigaction` that would *replace* the handler of a
//!    fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS) returns **EPERM**, so a
//!    plugin cannot take the crash handler's place and a later fault is still attributed to
//!    its worker and message (reading the current action stays allowed).
//! 2. The allow-list, built with seccompiler from [`allowed`]: every syscall the engines were
//!    seen to make (strace of the host-runner and end-to-end suites, see docs/security.md), some
//!    with argument filters. **Anything else raises SIGSYS** (`SECCOMP_RET_TRAP`): the crash
//!    handler records the syscall number (`si_syscall`) with the worker and message on the
//!    faulting thread, then the host dies by SIGSYS, and the supervisor reports
//!    `worker 'w' called socket(2), which the sandbox forbids`. A thread that blocks or ignores
//!    SIGSYS does not escape: the kernel forces the default action then.
//!
//! Argument filters:
//! - signals (`kill`, `tgkill`, `rt_sigqueueinfo`, `rt_tgsigqueueinfo`) only to the host's own
//!   pid; `tkill` and `pidfd_send_signal` not at all (glibc uses `tgkill`);
//! - `clone` only with `CLONE_THREAD` and without namespace flags (threads, never processes);
//! - `prlimit64` only on itself (pid 0 or its own); raising a hard limit fails anyway (no
//!   capabilities); `sched_setaffinity`, `sched_setscheduler`, `sched_setparam` and
//!   `setpriority` only on itself in the native profile; the .NET profile lets CoreCLR pin and
//!   prioritise its own threads by thread id (which a filter cannot tell from another pid: the
//!   PID namespace and the separate uid stop those calls reaching other processes);
//! - `ioctl` never with `TIOCSTI` or `TIOCLINUX` (typing into a terminal);
//! - `personality` only to read it (`0xffffffff`);
//! - `prctl` only with options that change nothing outside the thread (names, reads);
//!   `PR_SET_PDEATHSIG` and `PR_SET_DUMPABLE` are refused;
//! - the ring fd (3): `ftruncate`, `fallocate` and duplicating it (`dup*`, `fcntl(F_DUPFD*)`)
//!   are refused, a second layer behind the memfd seals;
//! - the ring fd (3) and the doorbell eventfd (4), [`GuardedFds`]: closing them (`close`, or a
//!   `close_range` whose range covers 3 or 4), duplicating them, and `dup2`/`dup3` *onto*
//!   them are refused, so a plugin cannot put a file of its own where the host writes its
//!   doorbell counters or reads its ring. `close_range` starting at 5 (how CPython and
//!   CoreCLR close "every other fd") and closes of any other fd stay allowed. `fcntl` on
//!   them is limited to `RING_FCNTL` and `BELL_FCNTL` (`seccomp/fds.rs`): the eventfd's file
//!   description is shared with the supervisor, whose async reader needs it non-blocking, so
//!   `F_SETFL` on it is refused too. The bell is never read (`read`, `readv`, `pread64`, `preadv`, `preadv2`
//!   of it are refused): the host only writes it, and a read would take the wake-up counts
//!   the supervisor's reader waits for;
//! - stdio, [`STDIO`]: 0 and 1 (`/dev/null`) and 2 (the supervisor's log pipe for this host)
//!   are never closed (`close`, a `close_range` covering them) nor replaced (`dup2`/`dup3`
//!   onto them), so a plugin can neither silence nor capture its host's log lines, the
//!   neighbours' included; writing to them and duplicating them stay allowed (plugins log to
//!   stderr; .NET's `Console` opens its streams on `dup`s of 0-2).
//!
//! No sockets of any family (`socket`, `socketpair`): plugins reach the outside only through
//! `gateway_call`. No `execve`, `fork`, `vfork`, `ptrace`, `process_vm_*`, mounts, namespaces,
//! `bpf`, `perf_event_open`, `io_uring_*`, `userfaultfd`, keyrings, module or clock changes.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

/// The x32 ABI bit of x86_64 syscall numbers.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

mod fds;

pub use fds::{BELL_FD, GuardedFds, RING_FD, STDIO};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

/// Which engine's allow-list to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Native `.so` plugins: glibc, libstdc++ and the host-runner itself.
    Native,
    /// CPython (the `python` engine): the native set plus `socketpair(AF_UNIX)`, the self-pipe
    /// of an asyncio event loop (`async def Process`), and I/O on such a pair (send, recv,
    /// get/setsockopt, getsockname, shutdown); never `socket`, `connect`, `bind` or `accept`.
    Python,
    /// CoreCLR with its JIT and GC on top of the native set.
    DotNet,
}

impl Profile {
    /// The name shown in `Ready.sandbox` and `/v1/hosts`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Native => "native",
            Profile::DotNet => "dotnet",
            Profile::Python => "python",
        }
    }
}

/// Both programs, in installation order.
pub struct Filters {
    pub prelude: BpfProgram,
    pub allow: BpfProgram,
}

/// Builds the filters for a process whose pid is `own_pid` (signals may go to it only) and
/// whose ring and doorbell are `guarded`.
pub fn build(profile: Profile, own_pid: i32, guarded: GuardedFds) -> Result<Filters, SandboxError> {
    Ok(Filters {
        prelude: prelude(profile),
        allow: allow_list(profile, own_pid, guarded)?,
    })
}

/// Builds and installs both filters for every thread of the process.
pub fn install(profile: Profile, guarded: GuardedFds) -> Result<(), SandboxError> {
    let filters = build(profile, std::process::id() as i32, guarded)?;
    apply(&filters)
}

/// Installs already-built filters.
pub fn apply(filters: &Filters) -> Result<(), SandboxError> {
    for prog in [&filters.prelude, &filters.allow] {
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
/// Offset of the low 32 bits of syscall argument `i` in `struct seccomp_data` (little endian).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_hi(i: u32) -> u32 {
    16 + 8 * i + 4
}

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

/// The signals whose handler is the crash handler's (see `crate::crash::FATAL_SIGNALS`).
const GUARDED_SIGNALS: [u32; 6] = [
    libc::SIGSEGV as u32,
    libc::SIGBUS as u32,
    libc::SIGILL as u32,
    libc::SIGFPE as u32,
    libc::SIGABRT as u32,
    libc::SIGSYS as u32,
];

/// Arch check, x32 bit -> SIGSYS, clone3 -> ENOSYS, (native) replacing a fatal signal's
/// handler -> EPERM; everything else allowed here (the allow-list decides).
fn prelude(profile: Profile) -> BpfProgram {
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let eperm = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let allow = libc::SECCOMP_RET_ALLOW;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_TRAP),
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
    ];
    if profile != Profile::DotNet {
        // if nr != rt_sigaction: allow
        // if signum not in GUARDED_SIGNALS: allow
        // if act == NULL (both halves zero): allow (a read of the current action)
        // else EPERM
        let n = GUARDED_SIGNALS.len() as u8;
        p.push(jump(BPF_JMP_JEQ_K, libc::SYS_rt_sigaction as u32, 0, n + 7));
        p.push(stmt(BPF_LD_W_ABS, arg_lo(0)));
        for (i, sig) in GUARDED_SIGNALS.iter().enumerate() {
            // On a match jump to the act check, past the remaining compares and the "allow"
            // that ends the list.
            p.push(jump(BPF_JMP_JEQ_K, *sig, n - i as u8, 0));
        }
        p.push(stmt(BPF_RET_K, allow));
        p.push(stmt(BPF_LD_W_ABS, arg_lo(1)));
        p.push(jump(BPF_JMP_JEQ_K, 0, 0, 2));
        p.push(stmt(BPF_LD_W_ABS, arg_hi(1)));
        p.push(jump(BPF_JMP_JEQ_K, 0, 1, 0));
        p.push(stmt(BPF_RET_K, eperm));
    }
    p.push(stmt(BPF_RET_K, allow));
    p
}

/// Syscalls allowed whatever their arguments, in both profiles.
fn unconditional(profile: Profile) -> Vec<libc::c_long> {
    use libc::*;
    let mut v = vec![
        // I/O on descriptors the host already holds, and files it may read.
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_lseek,
        SYS_openat,
        SYS_openat2,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_statfs,
        SYS_fstatfs,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_getcwd,
        SYS_pipe2,
        SYS_ppoll,
        SYS_pselect6,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_eventfd2,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_flock,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fadvise64,
        SYS_readahead,
        SYS_copy_file_range,
        SYS_sendfile,
        SYS_splice,
        SYS_tee,
        // The private temp folder (Landlock, the uid and file modes decide where).
        SYS_mkdirat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_renameat2,
        SYS_fchmod,
        SYS_umask,
        SYS_utimensat,
        // Memory.
        SYS_brk,
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_mremap,
        SYS_madvise,
        SYS_msync,
        SYS_mincore,
        SYS_mlock,
        SYS_mlock2,
        SYS_munlock,
        SYS_membarrier,
        SYS_memfd_create,
        SYS_get_mempolicy,
        SYS_set_mempolicy,
        SYS_mbind,
        // Threads and synchronisation.
        SYS_futex,
        SYS_futex_waitv,
        SYS_set_robust_list,
        SYS_get_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_exit,
        SYS_exit_group,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_sched_getparam,
        SYS_sched_getscheduler,
        SYS_sched_getattr,
        SYS_sched_get_priority_max,
        SYS_sched_get_priority_min,
        SYS_getpriority,
        SYS_getcpu,
        // clone3 is answered ENOSYS by the prelude (stacked filters: the errno wins over this
        // allow); glibc then falls back to clone, filtered below.
        SYS_clone3,
        // Signals within the process.
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_rt_sigtimedwait,
        SYS_rt_sigpending,
        SYS_rt_sigsuspend,
        SYS_sigaltstack,
        SYS_restart_syscall,
        SYS_timer_create,
        SYS_timer_settime,
        SYS_timer_gettime,
        SYS_timer_getoverrun,
        SYS_timer_delete,
        SYS_getitimer,
        SYS_setitimer,
        // Identity and time (reads).
        SYS_getpid,
        SYS_gettid,
        SYS_getppid,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getgroups,
        SYS_getresuid,
        SYS_getresgid,
        SYS_getpgid,
        SYS_getsid,
        SYS_capget,
        SYS_getrandom,
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_gettimeofday,
        SYS_times,
        SYS_getrusage,
        SYS_sysinfo,
        SYS_uname,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_readlink,
        SYS_pipe,
        SYS_poll,
        SYS_select,
        SYS_epoll_create,
        SYS_epoll_wait,
        SYS_eventfd,
        SYS_mkdir,
        SYS_rmdir,
        SYS_unlink,
        SYS_rename,
        SYS_getpgrp,
        SYS_time,
        SYS_alarm,
        SYS_arch_prctl,
        SYS_getrlimit,
    ]);
    if profile == Profile::DotNet {
        // CoreCLR's thread and GC tuning on its own threads (by thread id, see the module
        // docs), and the W^X double mapping of JIT code.
        v.extend([
            SYS_sched_setaffinity,
            SYS_sched_setscheduler,
            SYS_sched_setparam,
            SYS_setpriority,
            SYS_munlockall,
        ]);
    }
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn cond64(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conds).map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

/// One rule per value: the argument equals one of `values`.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SandboxError> {
    values
        .iter()
        .map(|v| rule(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
        .collect()
}

/// The options of `prctl` a plugin may use: names, reads, and nothing that outlives the
/// sandbox (no PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_MM, ...).
const PRCTL_ALLOWED: [libc::c_int; 14] = [
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_DUMPABLE,
    libc::PR_GET_PDEATHSIG,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_SECCOMP,
    libc::PR_CAPBSET_READ,
    libc::PR_GET_KEEPCAPS,
    libc::PR_GET_SECUREBITS,
    libc::PR_GET_TIMERSLACK,
    libc::PR_SET_TIMERSLACK,
    libc::PR_GET_THP_DISABLE,
    0x53564d41, // PR_SET_VMA: glibc names its anonymous mappings
];

/// Calls on an existing socket the python profile allows (see `allow_list`).
const PYTHON_SOCKET_IO: [libc::c_long; 9] = [
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
];

/// Namespace flags `clone` must not carry even with CLONE_THREAD.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn allow_list(
    profile: Profile,
    own_pid: i32,
    guarded_fds: GuardedFds,
) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = unconditional(profile)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let own = own_pid as u32 as u64;

    // Threads only: CLONE_THREAD set, no namespace flag.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![
            cond(0, SeccompCmpOp::MaskedEq(thread), thread)?,
            cond64(0, SeccompCmpOp::MaskedEq(CLONE_NAMESPACES), 0)?,
        ])?],
    );
    // Signals only to ourselves (raise, abort, the crash handler's re-raise).
    for nr in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.insert(nr, any_of(0, &[own])?);
    }
    // Limits and scheduling of ourselves only.
    rules.insert(libc::SYS_prlimit64, any_of(0, &[0, own])?);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_setrlimit, Vec::new());
    if profile == Profile::Python {
        // asyncio's event loop wakes itself through socket.socketpair(): an anonymous pair
        // of Unix sockets inside the process, which reaches nothing outside it.
        rules.insert(libc::SYS_socketpair, any_of(0, &[libc::AF_UNIX as u64])?);
        // Python's socket objects query and use that pair. With socket, connect, bind,
        // listen and accept forbidden, and every inherited fd closed at step 1, such a pair
        // is the only socket these calls can ever reach.
        for nr in PYTHON_SOCKET_IO {
            rules.insert(nr, Vec::new());
        }
    }
    if profile != Profile::DotNet {
        for nr in [
            libc::SYS_sched_setaffinity,
            libc::SYS_sched_setscheduler,
            libc::SYS_sched_setparam,
        ] {
            rules.insert(nr, any_of(0, &[0, own])?);
        }
        rules.insert(
            libc::SYS_setpriority,
            vec![
                rule(vec![
                    cond(0, SeccompCmpOp::Eq, libc::PRIO_PROCESS as u64)?,
                    cond(1, SeccompCmpOp::Eq, 0)?,
                ])?,
                rule(vec![
                    cond(0, SeccompCmpOp::Eq, libc::PRIO_PROCESS as u64)?,
                    cond(1, SeccompCmpOp::Eq, own)?,
                ])?,
            ],
        );
    }
    // No typing into a terminal.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            cond(1, SeccompCmpOp::Ne, libc::TIOCSTI)?,
            cond(1, SeccompCmpOp::Ne, libc::TIOCLINUX)?,
        ])?],
    );
    // Read the personality, never change it.
    rules.insert(libc::SYS_personality, any_of(0, &[0xffff_ffff])?);
    rules.insert(
        libc::SYS_prctl,
        any_of(0, &PRCTL_ALLOWED.map(|o| o as u64))?,
    );
    fds::insert_rules(&mut rules, guarded_fds)?;

    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TARGET)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::SeccompBuild(e.to_string()))
}

/// Whether `nr` is allowed by `profile` for some arguments (for tests and docs).
pub fn is_listed(profile: Profile, nr: libc::c_long) -> bool {
    let mut conditional = vec![
        libc::SYS_clone,
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_prlimit64,
        libc::SYS_ioctl,
        libc::SYS_personality,
        libc::SYS_prctl,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_close,
        libc::SYS_close_range,
        libc::SYS_fcntl,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_setpriority,
    ];
    #[cfg(target_arch = "x86_64")]
    conditional.extend([libc::SYS_dup2, libc::SYS_setrlimit]);
    if profile == Profile::Python {
        conditional.push(libc::SYS_socketpair);
        conditional.extend(PYTHON_SOCKET_IO);
    }
    unconditional(profile).contains(&nr) || conditional.contains(&nr)
}

#[cfg(test)]
mod tests;
