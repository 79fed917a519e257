//! The host-runner's command line, as the supervisor writes it (`pool/spawn.rs`).

use std::os::fd::RawFd;

use crate::sandbox;

/// The command line: `host-runner --ring-fd 3 [--bell-fd 4] --engine native|dotnet|python --host-id <id>
/// [--rlimit-as <bytes>] [--gc-heap-hard-limit <bytes>] [--rlimit-nofile <n>] [--uid <uid> --gid <gid>]
/// [--tmp-dir <dir>] [--no-seccomp] [--no-landlock] [--prestart] [--no-spin]
/// [--python-blocked-modules <a,b,...>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub ring_fd: RawFd,
    /// The supervisor's doorbell eventfd (`--bell-fd 4`): signalled after a frame is
    /// published while the supervisor's async reader sleeps (docs/ring.md).
    pub bell_fd: Option<RawFd>,
    pub engine: String,
    pub host_id: String,
    pub rlimit_as: Option<u64>,
    pub rlimit_nofile: u64,
    pub seccomp: bool,
    pub landlock: bool,
    /// The unprivileged uid and gid to switch to (the supervisor passes them when it runs as
    /// root).
    pub ids: Option<(u32, u32)>,
    /// The private temp folder the supervisor made for this host.
    pub tmp_dir: Option<std::path::PathBuf>,
    /// Start the engine's runtime before `Ready` (a .NET standby host: CoreCLR and the bridge
    /// are up before any worker is loaded).
    pub prestart: bool,
    /// .NET: the GC heap hard limit (`GCHeapHardLimit`), the .NET hosts' memory bound in
    /// place of `RLIMIT_AS` (CoreCLR reserves far more address space than it uses).
    pub gc_heap_hard_limit: Option<u64>,
    /// Never spin while waiting (measurement only: the callgrind guard test).
    pub no_spin: bool,
    /// The python engine's import policy (`PYTHON_BLOCKED_MODULES`), comma-separated.
    pub python_blocked_modules: Vec<String>,
}

/// A command line the host cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "missing {0}; the supervisor starts host-runner with --ring-fd 3 --engine <native|dotnet|python> --host-id <id>"
    )]
    Missing(&'static str),
    #[error("{flag} needs a value")]
    NoValue { flag: String },
    #[error("{flag} {value:?} is not a number")]
    NotANumber { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
        let mut it = args.into_iter();
        let (mut ring_fd, mut engine, mut host_id) = (None, None, None);
        let mut a = Args {
            ring_fd: 3,
            bell_fd: None,
            engine: String::new(),
            host_id: String::new(),
            rlimit_as: None,
            rlimit_nofile: sandbox::rlimits::DEFAULT_NOFILE,
            seccomp: true,
            landlock: true,
            ids: None,
            // The supervisor passes the private temp folder as TMPDIR (read here, before the
            // sandbox resets the environment); --tmp-dir overrides it.
            tmp_dir: std::env::var_os("TMPDIR").map(Into::into),
            prestart: false,
            gc_heap_hard_limit: None,
            no_spin: false,
            python_blocked_modules: Vec::new(),
        };
        let (mut uid, mut gid) = (None, None);
        while let Some(flag) = it.next() {
            let mut value = |flag: &str| {
                it.next().ok_or_else(|| ArgsError::NoValue {
                    flag: flag.to_string(),
                })
            };
            let number = |flag: &str, v: String| {
                v.parse::<u64>().map_err(|_| ArgsError::NotANumber {
                    flag: flag.to_string(),
                    value: v,
                })
            };
            match flag.as_str() {
                "--ring-fd" => {
                    let v = value(&flag)?;
                    ring_fd = Some(number(&flag, v)?);
                }
                "--bell-fd" => {
                    let v = value(&flag)?;
                    let fd = number(&flag, v)?;
                    a.bell_fd = Some(RawFd::try_from(fd).map_err(|_| ArgsError::NotANumber {
                        flag: "--bell-fd".into(),
                        value: fd.to_string(),
                    })?);
                }
                "--engine" => engine = Some(value(&flag)?),
                "--host-id" => host_id = Some(value(&flag)?),
                "--rlimit-as" => {
                    let v = value(&flag)?;
                    a.rlimit_as = Some(number(&flag, v)?);
                }
                "--rlimit-nofile" => {
                    let v = value(&flag)?;
                    a.rlimit_nofile = number(&flag, v)?;
                }
                "--uid" => {
                    let v = value(&flag)?;
                    uid = Some(number(&flag, v)?);
                }
                "--gid" => {
                    let v = value(&flag)?;
                    gid = Some(number(&flag, v)?);
                }
                "--tmp-dir" => a.tmp_dir = Some(value(&flag)?.into()),
                "--python-blocked-modules" => {
                    a.python_blocked_modules = value(&flag)?
                        .split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect();
                }
                "--no-seccomp" => a.seccomp = false,
                "--no-landlock" => a.landlock = false,
                "--prestart" => a.prestart = true,
                "--no-spin" => a.no_spin = true,
                "--gc-heap-hard-limit" => {
                    let v = value(&flag)?;
                    a.gc_heap_hard_limit = Some(number(&flag, v)?);
                }
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        let fd = ring_fd.ok_or(ArgsError::Missing("--ring-fd"))?;
        a.ring_fd = RawFd::try_from(fd).map_err(|_| ArgsError::NotANumber {
            flag: "--ring-fd".into(),
            value: fd.to_string(),
        })?;
        a.engine = engine.ok_or(ArgsError::Missing("--engine"))?;
        a.host_id = host_id.ok_or(ArgsError::Missing("--host-id"))?;
        a.ids = match (uid, gid) {
            (None, None) => None,
            (Some(u), Some(g)) => {
                let id = |flag: &str, v: u64| {
                    u32::try_from(v).map_err(|_| ArgsError::NotANumber {
                        flag: flag.into(),
                        value: v.to_string(),
                    })
                };
                Some((id("--uid", u)?, id("--gid", g)?))
            }
            (None, Some(_)) => return Err(ArgsError::Missing("--uid (with --gid)")),
            (Some(_), None) => return Err(ArgsError::Missing("--gid (with --uid)")),
        };
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_supervisor_command_line_parses() {
        let a = parse("--ring-fd 3 --engine native --host-id h1 --rlimit-as 1000 --no-landlock")
            .expect("parses");
        assert_eq!(a.ring_fd, 3);
        assert_eq!(a.engine, "native");
        assert_eq!(a.host_id, "h1");
        assert_eq!(a.rlimit_as, Some(1000));
        assert!(a.seccomp && !a.landlock);
        assert!(a.python_blocked_modules.is_empty());
        let p = parse(
            "--ring-fd 3 --engine python --host-id h --python-blocked-modules os,,subprocess",
        )
        .expect("parses");
        assert_eq!(p.python_blocked_modules, ["os", "subprocess"]);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert!(matches!(
            parse("--engine native --host-id h"),
            Err(ArgsError::Missing("--ring-fd"))
        ));
        assert!(matches!(
            parse("--ring-fd x"),
            Err(ArgsError::NotANumber { .. })
        ));
        assert!(matches!(
            parse("--ring-fd 3 --bogus"),
            Err(ArgsError::Unknown(_))
        ));
        assert!(matches!(parse("--ring-fd"), Err(ArgsError::NoValue { .. })));
    }
}
