//! At start-up: which sandbox layers hosts will get on this machine, the warnings for the ones
//! they will not, `SANDBOX_REQUIRE`, and the `workmanager_sandbox_layer` metric.
//!
//! The layers that do not depend on the kernel's Landlock ABI are the seccomp allow-list
//! (always), the PID namespace (root, or unprivileged user namespaces) and a separate
//! unprivileged uid (root only). The uid layer also needs the host to reach what it loads:
//! the host-runner binary, the .NET runtime and the data directory's `packages/`. The daemon
//! makes its own data directory traversable (0711) and everything in it private (umask 077)
//! but for the read-only packages; it never changes the permissions of directories above it,
//! so when one of them is closed the uid layer is reported missing instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::pool::layers::Layer;
use crate::pool::spawn::SandboxSettings;

/// What start-up decided.
#[derive(Debug, Clone)]
pub struct SandboxPlan {
    pub settings: SandboxSettings,
    /// Each layer and whether hosts will have it.
    pub layers: Vec<(Layer, bool)>,
    /// One line per missing layer, saying why and what to do.
    pub warnings: Vec<String>,
}

pub use wm_shared::kernel::landlock_abi;

/// Whether unprivileged user namespaces are enabled (for a non-root daemon's PID namespace).
fn user_namespaces_enabled() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let max_ok = read("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v != "0");
    let clone_ok = read("/proc/sys/kernel/unprivileged_userns_clone").map_or(true, |v| v != "0");
    max_ok && clone_ok
}

/// The first directory on the way to `path` (or `path` itself, which must be readable and,
/// for a directory or program, searchable/executable) that `uid`/`gid` cannot pass.
pub fn blocked_for(path: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    let path = std::fs::canonicalize(path).ok()?;
    let mut cur = PathBuf::new();
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let Ok(meta) = std::fs::metadata(&cur) else {
            return Some(cur);
        };
        let mode = meta.permissions().mode();
        let last = i + 1 == comps.len();
        // Directories need search (x); the target needs read (r) and, if a directory or an
        // executable, x too.
        let need = if last {
            if meta.is_dir() || mode & 0o111 != 0 {
                0o5
            } else {
                0o4
            }
        } else {
            0o1
        };
        let bits = if meta.uid() == uid {
            (mode >> 6) & 0o7
        } else if meta.gid() == gid {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        };
        if bits & need != need {
            return Some(cur);
        }
    }
    None
}

/// Decides the layers. `data_dir` must exist.
pub fn plan(config: &Config, host_runner: &Path, dotnet_root: Option<&Path>) -> SandboxPlan {
    let mut warnings = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;

    let landlock = match (config.sandbox_landlock, landlock_abi()) {
        (false, _) => {
            warnings.push(
                "Landlock is off (SANDBOX_LANDLOCK=off): hosts rely on seccomp, namespaces and the host uid"
                    .to_string(),
            );
            false
        }
        (true, None) => {
            warnings.push(
                "the kernel has no Landlock (Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK and lsm=landlock): hosts rely on seccomp, namespaces and the host uid"
                    .to_string(),
            );
            false
        }
        (true, Some(abi)) => {
            if abi < 6 {
                warnings.push(format!(
                    "the kernel's Landlock ABI is {abi} (< 6, Linux < 6.12): Landlock cannot scope signals; the seccomp filter and the PID namespace stop them"
                ));
            }
            true
        }
    };
    let pidns = root || user_namespaces_enabled();
    if !pidns {
        warnings.push(
            "hosts get no PID or network namespace: the daemon is not root and unprivileged user namespaces are disabled (sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone)"
                .to_string(),
        );
    }
    let (uid, gid) = config.host_ids;
    let host_ids = if !root {
        warnings.push(
            "hosts run as the daemon's own uid: only a daemon started as root can give them HOST_UID; the seccomp filter and the PID namespace keep them from signalling the daemon"
                .to_string(),
        );
        None
    } else {
        let mut needed: Vec<PathBuf> = vec![host_runner.to_path_buf(), config.data_dir.clone()];
        if let Some(d) = dotnet_root {
            needed.push(d.to_path_buf());
        }
        let blocked = needed
            .iter()
            .filter(|p| p.exists())
            .find_map(|p| blocked_for(p, uid, gid).map(|b| (p.clone(), b)));
        match blocked {
            Some((what, at)) => {
                warnings.push(format!(
                    "hosts run as the daemon's uid, not HOST_UID {uid}: uid {uid}/gid {gid} cannot reach {} ({} is closed to it); \
                     open that directory to others (chmod o+x) or move the data directory or binaries",
                    what.display(),
                    at.display()
                ));
                None
            }
            None => Some((uid, gid)),
        }
    };
    let layers = vec![
        (Layer::Seccomp, true),
        (Layer::Landlock, landlock),
        (Layer::Pidns, pidns),
        (Layer::Netns, pidns),
        (Layer::Uid, host_ids.is_some()),
    ];
    SandboxPlan {
        settings: SandboxSettings {
            landlock: config.sandbox_landlock,
            namespaces: true,
            host_ids,
            require: config.sandbox_require.clone(),
            tmp_root: Some(config.data_dir.join("hosts")),
        },
        layers,
        warnings,
    }
}

impl SandboxPlan {
    /// The first layer `SANDBOX_REQUIRE` asks for that hosts will not have, with the warning
    /// that explains it.
    pub fn unmet_requirement(&self) -> Option<String> {
        self.settings.require.iter().find_map(|req| {
            let have = self
                .layers
                .iter()
                .any(|(l, on)| l == req && *on);
            (!have).then(|| {
                let why = self
                    .warnings
                    .iter()
                    .find(|w| w.to_lowercase().contains(match req {
                        Layer::Pidns | Layer::Netns => "namespace",
                        Layer::Uid => "uid",
                        Layer::Landlock => "landlock",
                        Layer::Seccomp => "seccomp",
                    }))
                    .cloned()
                    .unwrap_or_default();
                format!(
                    "SANDBOX_REQUIRE asks for the sandbox layer '{}', which hosts cannot have on this machine: {why}",
                    req.name()
                )
            })
        })
    }

    /// `workmanager_sandbox_layer{layer="..."} 0|1`.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP workmanager_sandbox_layer Whether hosts get this sandbox layer on this machine (1) or not (0).\n# TYPE workmanager_sandbox_layer gauge"
        );
        for (l, on) in &self.layers {
            let _ = writeln!(
                out,
                "workmanager_sandbox_layer{{layer=\"{}\"}} {}",
                l.name(),
                u8::from(*on)
            );
        }
    }
}

/// Makes the data directory fit for hosts under another uid: the directory itself
/// traversable but not listable (0711), `packages/` likewise, and everything else the
/// daemon creates private from now on (umask 077). Hosts' private temp folders
/// (`hosts/<host id>/`) of a previous run are removed.
pub fn prepare_data_dir(data_dir: &Path) -> std::io::Result<()> {
    // SAFETY: umask takes a mode and cannot fail.
    unsafe { libc::umask(0o077) };
    // Private temp folders of hosts a killed predecessor left behind.
    let hosts = data_dir.join("hosts");
    if hosts.exists() {
        std::fs::remove_dir_all(&hosts)?;
    }
    for d in [data_dir.to_path_buf(), data_dir.join("packages")] {
        if d.is_dir() {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_directory_on_the_way_is_named() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        let closed = open.join("closed");
        std::fs::create_dir_all(closed.join("inner")).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = 65534;
        let canon = std::fs::canonicalize(&closed).unwrap();
        assert_eq!(
            blocked_for(&closed.join("inner"), nobody, nobody),
            Some(canon)
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(closed.join("inner"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(blocked_for(&closed.join("inner"), nobody, nobody), None);
    }
}
