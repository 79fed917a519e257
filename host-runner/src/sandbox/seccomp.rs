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
//!   them is limited to [`RING_FCNTL`] and [`BELL_FCNTL`]: the eventfd's file description is
//!   shared with the supervisor, whose async reader needs it non-blocking, so `F_SETFL` on it
//!   is refused too.
//!
//! No sockets of any family (`socket`, `socketpair`): plugins reach the outside only through
//! `gateway_call`. No `execve`, `fork`, `vfork`, `ptrace`, `process_vm_*`, mounts, namespaces,
//! `bpf`, `perf_event_open`, `io_uring_*`, `userfaultfd`, keyrings, module or clock changes.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

/// The x32 ABI bit of x86_64 syscall numbers.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The ring memfd's descriptor in every host (the supervisor `dup2`s it there).
pub const RING_FD: u64 = 3;
/// The doorbell eventfd's descriptor in every host the supervisor starts (`--bell-fd 4`).
pub const BELL_FD: u64 = 4;

/// The descriptors a plugin may neither close, nor duplicate, nor replace: the ring
/// (`--ring-fd`, 3) and the doorbell eventfd (`--bell-fd`, 4) when the host has one. Without
/// a bell, fd 4 is an ordinary number the host's own files take, so it is not guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardedFds {
    pub ring: RawFd,
    pub bell: Option<RawFd>,
}

impl GuardedFds {
    /// The layout the supervisor gives every host.
    pub const HOST: GuardedFds = GuardedFds {
        ring: RING_FD as RawFd,
        bell: Some(BELL_FD as RawFd),
    };

    /// The guarded numbers, ascending, without duplicates or negatives.
    fn sorted(self) -> Vec<u64> {
        let mut v: Vec<u64> = std::iter::once(self.ring)
            .chain(self.bell)
            .filter_map(|fd| u64::try_from(fd).ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The numbers that are never closed nor replaced: [`STDIO`] and the guarded ones,
    /// ascending, without duplicates.
    fn pinned(self) -> Vec<u64> {
        let mut v: Vec<u64> = STDIO.iter().copied().chain(self.sorted()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// stdin, stdout (both `/dev/null`, see fds.rs) and stderr (the supervisor's log pipe for
/// this host): a plugin may use them, even duplicate them, but neither close nor replace
/// them. Closing 2 or `dup2`ing onto it would lose, or hand the plugin, every later line of
/// its host (the neighbours' included); a freed 0 or 1 would be taken by the next file the
/// host opens, which `printf` would then write into.
pub const STDIO: [u64; 3] = [0, 1, 2];

/// The calls that read a descriptor's contents through its number (fd is argument 0).
/// The doorbell eventfd is never read by the host (only the supervisor resets its counter);
/// a plugin reading it would consume the wake-ups meant for the supervisor.
fn reads() -> [libc::c_long; 5] {
    [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_preadv2,
    ]
}

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

/// fcntl commands allowed on the ring fd itself (none duplicates it).
const RING_FCNTL: [libc::c_int; 4] = [
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_GET_SEALS,
];

/// fcntl commands allowed on the doorbell eventfd: reads only. The host sets its flags
/// before the filter (fds.rs) and only writes it afterwards; `F_SETFL` would change the
/// file description it shares with the supervisor (clearing `O_NONBLOCK` there would block
/// the supervisor's reader), and `F_DUPFD*` would copy it.
const BELL_FCNTL: [libc::c_int; 2] = [libc::F_GETFD, libc::F_GETFL];

/// `arg` is none of `guarded`.
fn not_guarded(arg: u8, guarded: &[u64]) -> Result<Vec<SeccompCondition>, SandboxError> {
    guarded
        .iter()
        .map(|fd| cond(arg, SeccompCmpOp::Ne, *fd))
        .collect()
}

/// `close_range(first, last, _)` rules whose range misses every `guarded` fd (ascending):
/// wholly below the lowest, wholly above the highest, or wholly inside a gap between two.
fn close_range_rules(guarded: &[u64]) -> Result<Vec<SeccompRule>, SandboxError> {
    let (Some(&lowest), Some(&highest)) = (guarded.first(), guarded.last()) else {
        return Ok(Vec::new());
    };
    let mut rules = vec![rule(vec![cond(0, SeccompCmpOp::Gt, highest)?])?];
    if lowest > 0 {
        rules.push(rule(vec![cond(1, SeccompCmpOp::Lt, lowest)?])?);
    }
    for pair in guarded.windows(2) {
        if pair[1] - pair[0] > 1 {
            rules.push(rule(vec![
                cond(0, SeccompCmpOp::Gt, pair[0])?,
                cond(1, SeccompCmpOp::Lt, pair[1])?,
            ])?);
        }
    }
    Ok(rules)
}

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
    // The ring fd: never resized (the seals are the first layer). Neither guarded fd is
    // resized or duplicated; neither they nor stdio are closed or replaced (module docs).
    let guarded = guarded_fds.sorted();
    let pinned = guarded_fds.pinned();
    for nr in [libc::SYS_ftruncate, libc::SYS_fallocate, libc::SYS_dup] {
        rules.insert(nr, vec![rule(not_guarded(0, &guarded)?)?]);
    }
    rules.insert(libc::SYS_close, vec![rule(not_guarded(0, &pinned)?)?]);
    // dup2/dup3: the source may not be a guarded fd, the target (newfd) not a pinned one.
    #[cfg(target_arch = "x86_64")]
    let dup2 = Some(libc::SYS_dup2);
    #[cfg(not(target_arch = "x86_64"))]
    let dup2 = None;
    for nr in dup2.into_iter().chain([libc::SYS_dup3]) {
        let mut both = not_guarded(0, &guarded)?;
        both.extend(not_guarded(1, &pinned)?);
        rules.insert(nr, vec![rule(both)?]);
    }
    rules.insert(libc::SYS_close_range, close_range_rules(&pinned)?);
    // The doorbell is written by the host and read only by the supervisor.
    if let Some(bell) = guarded_fds.bell.and_then(|b| u64::try_from(b).ok()) {
        for nr in reads() {
            rules.insert(nr, vec![rule(vec![cond(0, SeccompCmpOp::Ne, bell)?])?]);
        }
    }
    let mut fcntl = vec![rule(not_guarded(0, &guarded)?)?];
    let per_fd = std::iter::once((guarded_fds.ring, &RING_FCNTL[..]))
        .chain(guarded_fds.bell.map(|b| (b, &BELL_FCNTL[..])));
    for (fd, cmds) in per_fd {
        let Ok(fd) = u64::try_from(fd) else { continue };
        for cmd in cmds {
            fcntl.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, fd)?,
                cond(1, SeccompCmpOp::Eq, *cmd as u64)?,
            ])?);
        }
    }
    rules.insert(libc::SYS_fcntl, fcntl);

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
mod tests {
    //! Each probe runs in a forked child that installs the filters: they must never be
    //! installed in the test process itself.

    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

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
                            libc::prlimit(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old)
                                as i64,
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
                    // stdio may be used and duplicated (CoreCLR and .NET's Console dup
                    // 0-2), only never closed nor replaced; the ring may be read.
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
                "tgkill_parent" => {
                    libc::syscall(libc::SYS_tgkill, libc::getppid(), libc::getppid(), 0)
                }
                "tkill" => libc::syscall(libc::SYS_tkill, libc::getppid(), 0),
                "rt_sigqueueinfo" => {
                    libc::syscall(libc::SYS_rt_sigqueueinfo, libc::getppid(), 0, 0)
                }
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
                "close_range_from_3" => {
                    libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0)
                }
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
            let unix =
                unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, f.as_mut_ptr()) };
            report("unix", errno_of(unix as i64));
            // SAFETY: as above; the filter traps this call before the kernel sees it.
            let inet =
                unsafe { libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, f.as_mut_ptr()) };
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
}
