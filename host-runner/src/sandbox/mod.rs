//! The sandbox a host-runner enters before it opens any plugin.
//!
//! [`enter`] runs the steps in order, top-down, as Firecracker's jailer does in `Env::run`:
//!
//! 1. [`fds`]: close every inherited fd but the ring and stderr; stdin and stdout become
//!    `/dev/null`, so a plugin's `printf` cannot land in a file the host opened later.
//! 2. [`env`]: reset the environment to the allow-list and force the .NET diagnostics off.
//! 3. [`rlimits`]: `RLIMIT_CORE` 0, `RLIMIT_NOFILE`, optional `RLIMIT_AS`.
//! 4. `PR_SET_PDEATHSIG(SIGKILL)`, then `getppid()` against the parent seen at start, which
//!    closes the race of a parent that died before the prctl.
//! 5. Namespaces (best effort): a private network and IPC namespace when the kernel lets us
//!    (skipped when the supervisor already cloned the host into new PID, network and IPC
//!    namespaces: the host is then pid 1).
//!    Then the unprivileged uid and gid (`--uid`/`--gid`, i.e. `HOST_UID`/`HOST_GID`), when
//!    the supervisor runs as root: supplementary groups cleared, then gid, then uid; before
//!    the death signal, which a credential change clears.
//! 6. Capabilities: drop every capability (bounding, ambient, effective, permitted), so a
//!    host started as root keeps root's uid but none of its powers.
//! 7. `PR_SET_NO_NEW_PRIVS`.
//! 8. [`landlock`] (best effort): no filesystem writes, no TCP, no signals or abstract
//!    sockets outside the sandbox. Reads stay allowed: plugins load from the package dir and
//!    libc.
//! 9. [`seccomp`]: the engine's allow-list (last, so the steps above may use what it forbids);
//!    anything else raises SIGSYS, which the crash handler reports with the syscall's number.
//!
//! Steps 5 and 8 are best effort (logged to stderr when the kernel refuses them); the others
//! fail the start-up, and the host exits with [`crate::exit::SANDBOX`].

pub mod env;
pub mod fds;
pub mod landlock;
pub mod rlimits;
pub mod seccomp;

use std::io;
use std::os::fd::RawFd;

/// What the sandbox is built from; filled from the command line.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The ring memfd, kept open across the fd sweep.
    pub ring_fd: RawFd,
    /// The supervisor's doorbell eventfd (`--bell-fd`), kept open across the fd sweep too.
    pub bell_fd: Option<RawFd>,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub rlimit_nofile: u64,
    /// `RLIMIT_AS` in bytes, if set.
    pub rlimit_as: Option<u64>,
    /// Install the seccomp filter (`--no-seccomp` turns it off, for debugging only).
    pub seccomp: bool,
    /// Which engine's allow-list the filter is.
    pub profile: seccomp::Profile,
    /// Apply Landlock (`--no-landlock` turns it off, for debugging only).
    pub landlock: bool,
    /// The uid and gid to switch to, if any.
    pub ids: Option<(u32, u32)>,
    /// The host's private temp folder (`TMPDIR`, the one place Landlock lets it write).
    pub tmp_dir: Option<std::path::PathBuf>,
    /// The parent pid seen at the very start of `main`, to detect a parent that died early
    /// (0 in a PID namespace of our own, where the parent is not visible).
    pub parent_pid: i32,
}

/// One sandbox step that failed; the host cannot run plugins safely without it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("closing inherited file descriptors failed: {0}")]
    CloseFds(#[source] io::Error),
    #[error("reopening {fd} on /dev/null failed: {source}")]
    DevNull {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("the ring fd {0} is not open; the supervisor must pass the ring memfd as fd 3")]
    RingFdMissing(RawFd),
    #[error("setting {resource} to {value} failed: {source}")]
    Rlimit {
        resource: &'static str,
        value: u64,
        #[source]
        source: io::Error,
    },
    #[error("prctl({what}) failed: {source}")]
    Prctl {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the supervisor (pid {expected}) is gone (parent is now {actual}); exiting")]
    ParentGone { expected: i32, actual: i32 },
    #[error("dropping capabilities failed at {step}: {source}")]
    Capabilities {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("switching to uid {uid} gid {gid} failed at {step}: {source}")]
    Ids {
        uid: u32,
        gid: u32,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the sandbox must be entered while the process has one thread, found {0}; \
         start no threads before sandbox::enter"
    )]
    NotSingleThreaded(usize),
    #[error("building the seccomp filter failed: {0}")]
    SeccompBuild(String),
    #[error("installing the seccomp filter failed: {0}")]
    SeccompInstall(String),
}

/// The steps that took effect, in order; sent to the supervisor in `Ready.sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxReport {
    steps: Vec<String>,
}

impl SandboxReport {
    fn took(&mut self, step: impl Into<String>) {
        self.steps.push(step.into());
    }

    /// The steps, e.g. `["fds", "env", "rlimits", ..., "seccomp"]`.
    pub fn steps(&self) -> Vec<&str> {
        self.steps.iter().map(String::as_str).collect()
    }

    /// Comma-separated, as `Ready.sandbox` carries it.
    pub fn joined(&self) -> String {
        self.steps.join(",")
    }
}

/// Enters the sandbox. Call once, from `main`, after mapping the ring and before any thread
/// is started or any plugin is opened.
pub fn enter(cfg: &SandboxConfig) -> Result<SandboxReport, SandboxError> {
    let mut report = SandboxReport::default();

    // Landlock and the no-new-privs bit apply to the calling thread only: a thread started
    // earlier would stay outside the sandbox.
    let threads = thread_count();
    if threads > 1 {
        return Err(SandboxError::NotSingleThreaded(threads));
    }

    let tmp_dir = cfg.tmp_dir.clone();

    fds::sanitize(cfg.ring_fd, cfg.bell_fd)?;
    report.took("fds");

    env::reset(tmp_dir.as_deref());
    report.took("env");

    rlimits::apply(cfg.rlimit_nofile, cfg.rlimit_as)?;
    report.took("rlimits");

    // Namespaces need CAP_SYS_ADMIN, so they come before the uid switch and before the
    // capabilities are dropped. A host that is pid 1 was cloned into new PID, network and
    // IPC namespaces by the supervisor already.
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    if !pid1 && unshare_namespaces() {
        report.took("netns");
    }

    if let Some((uid, gid)) = cfg.ids {
        switch_ids(uid, gid)?;
        report.took(format!("uid:{uid}:{gid}"));
    }

    // After the uid switch: changing credentials clears the death signal.
    set_pdeathsig(cfg.parent_pid)?;
    report.took("pdeathsig");

    drop_capabilities()?;
    report.took("caps");

    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    report.took("no_new_privs");

    if cfg.landlock && cfg.profile == seccomp::Profile::DotNet {
        // Under Landlock CoreCLR 3.1 failed to load a worker assembly that P/Invokes libc
        // (0x8007054F, "internal error"), whichever write rights or scopes were handled; until
        // that is understood, .NET hosts rely on the read-only mount namespace, the uid,
        // seccomp and the PID namespace, and /v1/hosts shows Landlock missing for them.
        log(
            "landlock left off for the .NET engine (CoreCLR cannot load some assemblies under it; docs/security.md)",
        );
    } else if cfg.landlock {
        if let Some(abi) = landlock::restrict(tmp_dir.as_deref()) {
            report.took(format!("landlock:{abi}"));
        }
    } else {
        log("landlock disabled by --no-landlock (debugging only)");
    }

    // INVARIANT: the seccomp filter is the last step and is installed before the first
    // plugin is opened: everything after this line, plugin constructors included, runs
    // under it.
    if cfg.seccomp {
        let guarded = seccomp::GuardedFds {
            ring: cfg.ring_fd,
            bell: cfg.bell_fd,
        };
        seccomp::install(cfg.profile, guarded)?;
        report.took(match cfg.profile {
            seccomp::Profile::Native => "seccomp:native",
            seccomp::Profile::DotNet => "seccomp:dotnet",
            seccomp::Profile::Python => "seccomp:python",
        });
    } else {
        log("seccomp disabled by --no-seccomp (debugging only)");
    }

    Ok(report)
}

/// Writes one diagnostic line to stderr, which the supervisor reads as the host's log.
/// A failed write is dropped rather than panicking as `eprintln!` would: plugin code may set
/// `O_NONBLOCK` on fd 2 (only closing and replacing it are refused), and a full pipe must
/// not take a host thread down.
pub fn log(msg: &str) {
    use std::io::Write;
    let line = format!("host-runner[{}]: {msg}\n", std::process::id());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &'static str) -> Result<(), SandboxError> {
    // SAFETY: prctl with an integer option and integer arguments reads no memory of ours;
    // the unused arguments are passed as 0 as the man page asks.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc != 0 {
        return Err(SandboxError::Prctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Drops to `uid`/`gid` for good: supplementary groups, then the gid (while we still may),
/// then the uid (real, effective and saved, so it cannot be regained).
fn switch_ids(uid: u32, gid: u32) -> Result<(), SandboxError> {
    let fail = |step: &'static str| SandboxError::Ids {
        uid,
        gid,
        step,
        source: io::Error::last_os_error(),
    };
    // SAFETY: setgroups with a zero count reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("setgroups"));
    }
    // SAFETY: integer-only syscalls.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(fail("setresgid"));
    }
    // SAFETY: integer-only syscall.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(fail("setresuid"));
    }
    Ok(())
}

fn set_pdeathsig(parent_pid: i32) -> Result<(), SandboxError> {
    prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "PR_SET_PDEATHSIG",
    )?;
    if parent_pid == 0 {
        // In a PID namespace of our own the parent is invisible (getppid() is 0 and stays 0
        // if the parent dies). Its death shows instead on our stderr pipe, whose only reader
        // it holds: POLLERR once the read end is closed.
        let mut p = libc::pollfd {
            fd: 2,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n > 0 && p.revents & libc::POLLERR != 0 {
            return Err(SandboxError::ParentGone {
                expected: 0,
                actual: -1,
            });
        }
        return Ok(());
    }
    // The parent may have died between fork and the prctl above, in which case no signal
    // will ever come: we were reparented, so getppid() changed.
    // SAFETY: getppid has no preconditions and cannot fail.
    let now = unsafe { libc::getppid() };
    if now != parent_pid || now == 1 {
        return Err(SandboxError::ParentGone {
            expected: parent_pid,
            actual: now,
        });
    }
    Ok(())
}

/// A private network namespace leaves a plugin without any interface even if a socket got
/// through; a private IPC namespace hides SysV IPC objects of other processes. Needs
/// CAP_SYS_ADMIN; without it (an unprivileged supervisor) the step is skipped and logged.
fn unshare_namespaces() -> bool {
    // SAFETY: unshare takes flags only; we are single-threaded (checked in `enter`), which
    // CLONE_NEWNET/CLONE_NEWIPC do not require but keeps every thread in one namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC) };
    if rc != 0 {
        log(&format!(
            "namespaces skipped (best effort): unshare(CLONE_NEWNET|CLONE_NEWIPC): {}",
            io::Error::last_os_error()
        ));
        return false;
    }
    true
}

/// Drops every capability: the bounding set (so no exec could regain them, belt and braces
/// with no_new_privs), the ambient set, then effective, permitted and inheritable.
fn drop_capabilities() -> Result<(), SandboxError> {
    // Capabilities above CAP_LAST_CAP return EINVAL from PR_CAPBSET_DROP: stop there.
    for cap in 0..64 {
        // SAFETY: integer-only prctl; see `prctl`.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINVAL) => break,
                // Without CAP_SETPCAP (an unprivileged supervisor) the bounding set cannot
                // change, and there is nothing in it that we hold anyway.
                Some(libc::EPERM) => break,
                _ => {
                    return Err(SandboxError::Capabilities {
                        step: "PR_CAPBSET_DROP",
                        source: err,
                    });
                }
            }
        }
    }
    // SAFETY: integer-only prctl; see `prctl`. EINVAL on kernels without ambient caps is
    // ignored: there is then no ambient set to clear.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) with a version-3 header reads the header and two CapData structs
    // (the v3 ABI's 64-bit capability sets), both live locals of the right #[repr(C)] layout;
    // pid 0 means the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(SandboxError::Capabilities {
            step: "capset",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
