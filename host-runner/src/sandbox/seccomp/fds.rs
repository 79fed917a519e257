//! The descriptors the filter pins (see the parent module's docs): the ring (3) and the
//! doorbell eventfd (4) are neither resized, duplicated, closed, replaced nor (the bell) read;
//! stdio (0-2) is neither closed nor replaced. Argument filters on the fd calls only.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{SeccompCmpOp, SeccompCondition, SeccompRule};

use super::super::SandboxError;
use super::{cond, rule};

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

/// Adds the fd calls' rules for a host whose ring and doorbell are `guarded_fds`.
pub(super) fn insert_rules(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    guarded_fds: GuardedFds,
) -> Result<(), SandboxError> {
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
    Ok(())
}
