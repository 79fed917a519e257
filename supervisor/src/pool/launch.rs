//! Starting one host process: `clone3` into fresh namespaces, then `execve`.
//!
//! `std::process::Command` cannot put a child into a new PID namespace, and a PID namespace
//! is one of the layers that do not depend on the kernel's Landlock ABI: a host in its own
//! PID namespace sees no other process, so it cannot name the supervisor or a sibling in
//! `kill`, `ptrace` or `/proc/<pid>`. So the spawner thread clones the child itself:
//!
//! - `CLONE_NEWPID` (the host is pid 1 of its namespace), `CLONE_NEWNET` and `CLONE_NEWIPC`
//!   when the daemon may create namespaces (root); without that, the same flags plus
//!   `CLONE_NEWUSER`, mapping the daemon's own uid and gid (Linux allows an unprivileged user
//!   that much where user namespaces are enabled); failing both, no namespaces, and the host
//!   reports the layer missing;
//! - `CLONE_PIDFD`: the pidfd comes from the clone itself, so there is no window in which the
//!   pid could be reused before we hold it.
//!
//! Between `clone3` and `execve` the child runs in a copy of a multi-threaded process, so it
//! only makes async-signal-safe system calls on memory prepared before the clone (argument
//! and environment arrays, descriptors). An `execve` failure is reported through a CLOEXEC
//! pipe, as std does.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

mod child_fds;
use child_fds::ChildFds;

/// `struct clone_args` of clone3(2) (the version-0 size, 64 bytes, plus `set_tid` and
/// `cgroup`: 88 bytes, CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which namespaces the child got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespaces {
    pub pid: bool,
    pub net: bool,
    pub ipc: bool,
    pub user: bool,
    /// A mount namespace in which every file system is read-only but the host's own temp
    /// folder (so `/tmp`, `/dev/shm`, the data directory and siblings' folders are not
    /// writable, whatever the uid).
    pub mount: bool,
}

impl Namespaces {
    /// e.g. `pid,net,ipc`; empty when none.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.user {
            v.push("user");
        }
        if self.pid {
            v.push("pid");
        }
        if self.net {
            v.push("net");
        }
        if self.ipc {
            v.push("ipc");
        }
        if self.mount {
            v.push("mnt");
        }
        v
    }
}

/// What to start.
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The ring memfd; the child gets it as fd 3 with CLOEXEC cleared.
    pub ring_fd: RawFd,
    /// The ring's doorbell eventfd; the child gets it as fd 4 with CLOEXEC cleared.
    pub bell_fd: Option<RawFd>,
    /// Try to give the child its own PID, network and IPC namespaces.
    pub namespaces: bool,
    /// The host's private temp folder, the one writable mount in its mount namespace.
    pub tmp_dir: Option<PathBuf>,
}

/// A started child.
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The read end of the child's stderr.
    pub stderr: OwnedFd,
    pub namespaces: Namespaces,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live [i32; 2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether this process may create PID and network namespaces without a user namespace.
pub fn may_create_namespaces() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `spec.program`. Call from the spawner thread only (see `spawn.rs`).
pub fn launch(spec: &LaunchSpec) -> io::Result<Launched> {
    let prog = cstring(spec.program.as_os_str())?;
    let mut argv_c = vec![prog.clone()];
    for a in &spec.args {
        argv_c.push(cstring(OsStr::new(a))?);
    }
    let envp_c: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(OsStr::from_bytes(&kv))
        })
        .collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    // SAFETY: open with a NUL-terminated literal and flags only.
    let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if devnull < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    let devnull = unsafe { OwnedFd::from_raw_fd(devnull) };
    let (err_r, err_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;

    let fds = ChildFds {
        devnull: devnull.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        ring: spec.ring_fd,
        bell: spec.bell_fd.unwrap_or(-1),
        err: err_w.as_raw_fd(),
    };
    let user_ids = UserIds::current();
    let mounts = MountPlan::new(spec.tmp_dir.as_deref());

    let attempts: &[(u64, Namespaces)] = if !spec.namespaces {
        &[(0, Namespaces::NONE)]
    } else if may_create_namespaces() {
        &[
            (NS_PLAIN | libc::CLONE_NEWNS as u64, Namespaces::WITH_MOUNT),
            (NS_PLAIN, Namespaces::PLAIN),
            (0, Namespaces::NONE),
        ]
    } else {
        &[
            (NS_PLAIN | libc::CLONE_NEWUSER as u64, Namespaces::WITH_USER),
            (0, Namespaces::NONE),
        ]
    };
    let mut last_err = io::Error::from_raw_os_error(libc::EINVAL);
    for &(ns_flags, namespaces) in attempts {
        // The child waits on this pipe until its uid/gid maps are written (user namespaces).
        let (go_r, go_w) = pipe()?;
        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: libc::CLONE_PIDFD as u64 | ns_flags,
            pidfd: (&mut pidfd as *mut RawFd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 with a fully initialised clone_args of the size we pass and no stack
        // (fork-like: the child gets a copy of this thread's stack). The child branch below
        // runs only async-signal-safe calls on memory prepared above and never returns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                size_of::<CloneArgs>(),
            )
        };
        if rc == 0 {
            // SAFETY: we are the child; see `child_after_clone`.
            unsafe {
                let plan = namespaces.mount.then_some(&mounts);
                child_after_clone(
                    &fds,
                    plan,
                    (go_r.as_raw_fd(), go_w.as_raw_fd()),
                    prog.as_ptr(),
                    &argv,
                    &envp,
                );
            }
        }
        if rc < 0 {
            last_err = io::Error::last_os_error();
            // Namespaces refused (no privilege, user namespaces off): try the next option.
            continue;
        }
        let pid = rc as i32;
        // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        if namespaces.user
            && let Err(e) = write_id_maps(pid, &user_ids)
        {
            kill_and_reap(pid);
            last_err = e;
            continue;
        }
        drop(go_r);
        // Let the child go on to execve.
        drop(go_w);
        drop(err_w);
        drop(stderr_w);
        drop(devnull);
        // An exec error arrives as 4 bytes of errno; EOF means execve succeeded.
        let mut buf = [0u8; 4];
        let n = loop {
            // SAFETY: reads at most 4 bytes into a live [u8; 4].
            let n = unsafe { libc::read(err_r.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break n;
        };
        if n == 4 {
            reap(pid);
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
        }
        return Ok(Launched {
            pid,
            pidfd,
            stderr: stderr_r,
            namespaces,
        });
    }
    Err(last_err)
}

const NS_PLAIN: u64 = (libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC) as u64;

impl Namespaces {
    const NONE: Namespaces = Namespaces {
        pid: false,
        net: false,
        ipc: false,
        user: false,
        mount: false,
    };
    const PLAIN: Namespaces = Namespaces {
        pid: true,
        net: true,
        ipc: true,
        user: false,
        mount: false,
    };
    const WITH_MOUNT: Namespaces = Namespaces {
        mount: true,
        ..Namespaces::PLAIN
    };
    const WITH_USER: Namespaces = Namespaces {
        user: true,
        ..Namespaces::PLAIN
    };
}

struct UserIds {
    uid: u32,
    gid: u32,
}

impl UserIds {
    fn current() -> UserIds {
        // SAFETY: getuid/getgid have no preconditions.
        unsafe {
            UserIds {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        }
    }
}

/// Maps the daemon's own uid and gid into the child's new user namespace (all an
/// unprivileged process may map), after denying setgroups as Linux requires for that.
fn write_id_maps(pid: i32, ids: &UserIds) -> io::Result<()> {
    let proc = format!("/proc/{pid}");
    std::fs::write(format!("{proc}/setgroups"), "deny")?;
    std::fs::write(format!("{proc}/uid_map"), format!("{0} {0} 1\n", ids.uid))?;
    std::fs::write(format!("{proc}/gid_map"), format!("{0} {0} 1\n", ids.gid))?;
    Ok(())
}

/// The child's side between clone3 and execve. Never returns.
///
/// # Safety
/// Call only in the child of a fork-like clone3. All pointers point at memory prepared by
/// the parent before the clone (copied into the child); only async-signal-safe system calls
/// are made.
unsafe fn child_after_clone(
    fds: &ChildFds,
    mounts: Option<&MountPlan>,
    (go, go_w): (RawFd, RawFd),
    prog: *const libc::c_char,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: (whole body) the function's contract; each call passes integers or pointers to
    // the prepared, NUL-terminated arrays.
    unsafe {
        // Wait until the parent says go (it writes the user namespace maps first); EOF on
        // the pipe is the signal, so our own copy of the write end goes first.
        libc::close(go_w);
        let mut b = 0u8;
        while libc::read(go, (&mut b as *mut u8).cast(), 1) < 0 {}
        let fail = |fds: &ChildFds| -> ! {
            let e = *libc::__errno_location();
            let bytes = e.to_ne_bytes();
            libc::write(fds.err, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        };
        if let Some(plan) = mounts {
            plan.apply();
        }
        // std ignores SIGPIPE in the daemon; an ignored disposition survives execve.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Every source out of 0-4 first, then onto 0-4 (see child_fds.rs).
        let Some(placed) = fds.lifted() else {
            fail(fds)
        };
        if !placed.place() {
            fail(&placed)
        }
        libc::execve(prog, argv.as_ptr(), envp.as_ptr());
        fail(&placed)
    }
}

/// What the child does in its new mount namespace, prepared (and allocated) by the parent.
struct MountPlan {
    /// Every mount point but /proc and /sys, with the flags to remount it read-only with
    /// (its own nosuid/nodev/noexec/atime flags kept).
    read_only: Vec<(CString, libc::c_ulong)>,
    /// The temp folder, bound onto itself (writable) after the rest went read-only.
    tmp: Option<CString>,
}

impl MountPlan {
    fn new(tmp_dir: Option<&std::path::Path>) -> MountPlan {
        let read_only = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(mp, flags)| CString::new(mp).ok().map(|c| (c, flags)))
            .collect();
        let tmp = tmp_dir.and_then(|t| CString::new(t.as_os_str().as_bytes()).ok());
        MountPlan { read_only, tmp }
    }

    /// In the child: nothing propagates back, everything read-only, then the temp folder
    /// bound onto itself as the one writable place. Best effort per mount point (async-signal-safe: mount(2) only).
    ///
    /// # Safety
    /// Only in a child in its own mount namespace, between clone and execve.
    unsafe fn apply(&self) {
        // SAFETY: (whole body) mount(2) with NUL-terminated strings prepared by the parent.
        unsafe {
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                // Without a private tree a change here could reach the daemon's namespace.
                return;
            }
            // The temp folder first, bound onto itself: a mount of its own, which the
            // read-only remounts below (of the mounts that existed before) leave writable.
            if let Some(t) = &self.tmp {
                libc::mount(
                    t.as_ptr(),
                    t.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                );
            }
            for (mp, flags) in &self.read_only {
                libc::mount(
                    none,
                    mp.as_ptr(),
                    none,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
                    std::ptr::null(),
                );
            }
            if let Some(t) = &self.tmp {
                libc::mount(
                    t.as_ptr(),
                    t.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                );
            }
        }
    }
}

/// (mount point, per-mount flags to keep) of each line of /proc/self/mountinfo, without /proc
/// and /sys (and what is below them).
fn parse_mountinfo(text: &str) -> Vec<(Vec<u8>, libc::c_ulong)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(mp), Some(opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let mp = unescape_octal(mp);
        let skip = [b"/proc".as_slice(), b"/sys".as_slice()]
            .iter()
            .any(|p| mp == *p || (mp.starts_with(p) && mp.get(p.len()) == Some(&b'/')));
        if skip {
            continue;
        }
        let mut flags: libc::c_ulong = 0;
        for o in opts.split(',') {
            flags |= match o {
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                "noatime" => libc::MS_NOATIME,
                "nodiratime" => libc::MS_NODIRATIME,
                "relatime" => libc::MS_RELATIME,
                "strictatime" => libc::MS_STRICTATIME,
                _ => 0,
            };
        }
        out.push((mp, flags));
    }
    out
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Reaps `pid` (blocking).
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing into a live i32.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// SIGKILLs and reaps `pid`, a child of ours not yet reaped (so the pid cannot be reused).
pub fn kill_and_reap(pid: i32) {
    // SAFETY: kill with integers only; `pid` is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_points_and_kept_flags() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw\n\
                    24 23 0:22 / /proc/sys/fs/binfmt_misc rw,relatime - autofs a rw\n\
                    25 22 0:23 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw\n\
                    26 22 0:24 / /mnt/with\\040space ro,noexec - ext4 /dev/vdb ro\n";
        let got = parse_mountinfo(text);
        assert_eq!(
            got,
            vec![
                (b"/".to_vec(), libc::MS_RELATIME),
                (b"/dev/shm".to_vec(), libc::MS_NOSUID | libc::MS_NODEV),
                (b"/mnt/with space".to_vec(), libc::MS_NOEXEC),
            ]
        );
    }
}
