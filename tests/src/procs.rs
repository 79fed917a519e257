//! A snapshot of the process table for leak checks: children of a pid, zombies, orphans of a
//! binary, open fds by kind (memfds, pidfds, sockets, ...), memfd mappings, RSS, and new files
//! in `/tmp` and `/dev/shm`. Linux `/proc` only; everything is read, nothing is signalled.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub comm: String,
}

/// Reads `/proc/<pid>/stat`; `None` when the process is gone.
pub fn process(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain ") ": split at the last one.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 2..)?.split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        state,
        comm,
    })
}

/// Every process now.
pub fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// Direct children of `pid` (zombies included).
pub fn children(pid: i32) -> Vec<Proc> {
    all().into_iter().filter(|p| p.ppid == pid).collect()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    process(pid).is_some_and(|p| p.state != 'Z')
}

/// The binary a process runs (`/proc/<pid>/exe`), if readable.
pub fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Live processes running `binary` whose parent is init (pid 1) or gone: orphans.
pub fn orphans_of(binary: &Path) -> Vec<Proc> {
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    all()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| exe(p.pid).is_some_and(|e| e == want))
        .filter(|p| p.ppid == 1 || !alive(p.ppid))
        .collect()
}

/// Open file descriptors of a process, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fds {
    pub total: usize,
    pub sockets: usize,
    /// Links `memfd:...`.
    pub memfds: usize,
    /// `anon_inode:[pidfd]`.
    pub pidfds: usize,
    pub pipes: usize,
    /// Other `anon_inode:` (eventfd, epoll, timerfd, ...).
    pub anon: usize,
    /// Paths.
    pub files: usize,
}

/// Counts `/proc/<pid>/fd` by kind.
pub fn fds(pid: i32) -> Fds {
    let mut f = Fds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return f;
    };
    for e in dir.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        f.total += 1;
        if t.starts_with("socket:") {
            f.sockets += 1;
        } else if t.starts_with("/memfd:") || t.starts_with("memfd:") {
            f.memfds += 1;
        } else if t == "anon_inode:[pidfd]" {
            f.pidfds += 1;
        } else if t.starts_with("pipe:") {
            f.pipes += 1;
        } else if t.starts_with("anon_inode:") {
            f.anon += 1;
        } else {
            f.files += 1;
        }
    }
    f
}

/// Distinct memfd objects mapped into a process (`/proc/<pid>/maps`, by inode).
pub fn memfd_mappings(pid: i32) -> usize {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return 0;
    };
    maps.lines()
        .filter(|l| l.contains("/memfd:"))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The top-level entries of `/tmp` and `/dev/shm` now.
pub fn tmp_entries() -> BTreeSet<PathBuf> {
    ["/tmp", "/dev/shm"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .collect()
}

/// Entries of `after` not in `before` whose name mentions one of `pids` as a whole number
/// (CoreCLR's `clr-debug-pipe-<pid>-*`, `dotnet-diagnostic-<pid>-*`, ...) or starts with
/// `workmanager` or `host-runner`. Other programs' files are ignored: the machine is shared.
pub fn new_tmp_files(
    before: &BTreeSet<PathBuf>,
    after: &BTreeSet<PathBuf>,
    pids: &BTreeSet<i32>,
) -> Vec<PathBuf> {
    after
        .difference(before)
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let numbers: BTreeSet<i32> = name
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            let ours = name.starts_with("workmanager") || name.starts_with("host-runner");
            ours || !numbers.is_disjoint(pids)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let p = process(me).expect("own stat");
        assert_eq!(p.pid, me);
        assert!(alive(me));
        assert!(fds(me).total >= 3, "stdin, stdout, stderr at least");
        assert!(rss_bytes(me).is_some_and(|r| r > 0));
    }

    #[test]
    fn a_reaped_child_is_gone_and_an_unreaped_one_is_a_zombie() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process(pid).is_some_and(|p| p.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "true did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let me = i32::try_from(std::process::id()).expect("pid fits");
        assert!(
            children(me).iter().any(|c| c.pid == pid && c.state == 'Z'),
            "an exited, unreaped child is a zombie"
        );
        assert!(!alive(pid));
        child.wait().expect("reap");
        assert!(process(pid).is_none());
    }

    #[test]
    fn new_tmp_files_keeps_only_what_names_our_pids_or_patterns() {
        let before: BTreeSet<PathBuf> = [PathBuf::from("/tmp/old")].into();
        let after: BTreeSet<PathBuf> = [
            "/tmp/old",
            "/tmp/clr-debug-pipe-4242-123-in",
            "/tmp/someone-else-99",
            "/dev/shm/workmanager-x",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let pids: BTreeSet<i32> = [4242].into();
        let got = new_tmp_files(&before, &after, &pids);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/dev/shm/workmanager-x"),
                PathBuf::from("/tmp/clr-debug-pipe-4242-123-in")
            ]
        );
    }
}
