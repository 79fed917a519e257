//! The sandbox layers a host runs under, as `/v1/hosts`, the start-up warnings, the
//! `workmanager_sandbox_layer` metric and `SANDBOX_REQUIRE` see them.
//!
//! A host lists the steps that took effect in `Ready.sandbox` (e.g.
//! `fds,env,rlimits,uid:65534:65534,pdeathsig,caps,no_new_privs,landlock:6,seccomp:native`);
//! the namespaces come from the clone that started it (`launch.rs`).

use super::launch::Namespaces;

/// A layer that an operator can require with `SANDBOX_REQUIRE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The engine's seccomp allow-list.
    Seccomp,
    /// Landlock (filesystem, and signals on ABI >= 6).
    Landlock,
    /// A PID namespace of its own.
    Pidns,
    /// A network namespace of its own.
    Netns,
    /// An unprivileged uid other than the daemon's.
    Uid,
}

impl Layer {
    pub const ALL: [Layer; 5] = [
        Layer::Seccomp,
        Layer::Landlock,
        Layer::Pidns,
        Layer::Netns,
        Layer::Uid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Seccomp => "seccomp",
            Layer::Landlock => "landlock",
            Layer::Pidns => "pidns",
            Layer::Netns => "netns",
            Layer::Uid => "uid",
        }
    }

    pub fn parse(s: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// The layers one host runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLayers {
    /// The seccomp profile (`native`, `dotnet`), if the filter is installed.
    pub seccomp: Option<String>,
    /// The Landlock ABI the kernel enforced, if Landlock took effect.
    pub landlock_abi: Option<u32>,
    /// Namespaces of its own: `pid`, `net`, `ipc`, `user`.
    pub namespaces: Vec<&'static str>,
    /// The uid and gid the host runs as, when it switched to an unprivileged one.
    pub uid: Option<(u32, u32)>,
}

impl HostLayers {
    /// From `Ready.sandbox` and the namespaces the clone gave.
    pub fn from_ready(sandbox: &str, ns: Namespaces) -> HostLayers {
        let mut l = HostLayers {
            namespaces: ns.names(),
            ..HostLayers::default()
        };
        for step in sandbox.split(',') {
            let mut parts = step.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("seccomp"), profile, _) => {
                    l.seccomp = Some(profile.unwrap_or("native").to_string())
                }
                (Some("landlock"), abi, _) => {
                    l.landlock_abi = Some(abi.and_then(|a| a.parse().ok()).unwrap_or(1))
                }
                (Some("netns"), _, _) => {
                    for n in ["net", "ipc"] {
                        if !l.namespaces.contains(&n) {
                            l.namespaces.push(n);
                        }
                    }
                }
                (Some("uid"), Some(u), Some(g)) => {
                    if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
                        l.uid = Some((u, g));
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// Whether `layer` is in place.
    pub fn has(&self, layer: Layer) -> bool {
        match layer {
            Layer::Seccomp => self.seccomp.is_some(),
            Layer::Landlock => self.landlock_abi.is_some(),
            Layer::Pidns => self.namespaces.contains(&"pid"),
            Layer::Netns => self.namespaces.contains(&"net"),
            Layer::Uid => self.uid.is_some_and(|(u, _)| u != 0 && u != daemon_uid()),
        }
    }

    /// The first of `required` that is missing, with what the host reported instead.
    pub fn first_missing(&self, required: &[Layer]) -> Option<(Layer, String)> {
        required.iter().find(|l| !self.has(**l)).map(|l| {
            let why = match l {
                Layer::Seccomp => "the seccomp filter is off (--no-seccomp)".to_string(),
                Layer::Landlock => {
                    "Landlock did not take effect (kernel without Landlock, or SANDBOX_LANDLOCK=off)"
                        .to_string()
                }
                Layer::Pidns | Layer::Netns => format!(
                    "the host has namespaces [{}]; creating them needs root or unprivileged user namespaces",
                    self.namespaces.join(",")
                ),
                Layer::Uid => match self.uid {
                    Some((u, _)) => format!("it runs as uid {u}"),
                    None => "it runs as the daemon's uid (the daemon is not root, or HOST_UID cannot reach the host-runner, the .NET runtime or the data directory)".to_string(),
                },
            };
            (*l, why)
        })
    }
}

fn daemon_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Parses `SANDBOX_REQUIRE` (`landlock,pidns`; empty for none).
pub fn parse_required(s: &str) -> Result<Vec<Layer>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Layer::parse(p).ok_or_else(|| {
                format!(
                    "unknown sandbox layer '{p}' (known: {})",
                    Layer::ALL.map(Layer::name).join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_steps_and_namespaces_give_the_layers() {
        let ns = Namespaces {
            pid: true,
            net: true,
            ipc: true,
            user: false,
            mount: false,
        };
        let l = HostLayers::from_ready(
            "fds,env,rlimits,uid:65534:65534,pdeathsig,caps,no_new_privs,landlock:6,seccomp:dotnet",
            ns,
        );
        assert_eq!(l.seccomp.as_deref(), Some("dotnet"));
        assert_eq!(l.landlock_abi, Some(6));
        assert_eq!(l.uid, Some((65534, 65534)));
        assert_eq!(l.namespaces, ["pid", "net", "ipc"]);
        assert!(Layer::ALL.iter().all(|x| l.has(*x)));
        assert_eq!(l.first_missing(&Layer::ALL), None);

        let bare = HostLayers::from_ready("fds,env,seccomp:native", Namespaces::default());
        let (missing, why) = bare
            .first_missing(&[Layer::Seccomp, Layer::Landlock])
            .expect("landlock missing");
        assert_eq!(missing, Layer::Landlock);
        assert!(why.contains("SANDBOX_LANDLOCK"), "{why}");
    }

    #[test]
    fn sandbox_require_parses_and_names_unknown_layers() {
        assert_eq!(
            parse_required("landlock, pidns").unwrap(),
            [Layer::Landlock, Layer::Pidns]
        );
        assert_eq!(parse_required("").unwrap(), []);
        let e = parse_required("landlock,magic").unwrap_err();
        assert!(e.contains("'magic'") && e.contains("pidns"), "{e}");
    }
}
