//! Starting one host-runner process: memfd ring, fork+exec, pidfd, `Ready`.
//!
//! **Invariant:** hosts are forked only from the dedicated spawner thread. The host sets
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it exits; tokio's blocking
//! threads come and go, so forking from one of them would kill hosts at random. The spawner
//! thread lives as long as the process.
//!
//! The child gets exactly: the ring memfd as fd 3, stderr as a pipe we log line by line,
//! stdin/stdout on /dev/null, and an environment reset to an allow-list.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use wm_shared::protocol::link::HostLink;
use wm_shared::protocol::{EngineKind, Message, Ready};
use wm_shared::ring::{Region, RingConfig};

/// What it takes to start hosts.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// Path of the `host-runner` binary.
    pub host_runner: PathBuf,
    pub ring: RingConfig,
    /// `RLIMIT_AS` for each host, if set.
    pub rlimit_as: Option<u64>,
    pub rlimit_nofile: u64,
    /// Where the .NET runtime lives (passed as `DOTNET_ROOT`).
    pub dotnet_root: Option<PathBuf>,
    /// How long a new host may take to say `Ready`.
    pub ready_timeout: Duration,
    /// Extra arguments (debugging only: `--no-seccomp`, `--no-landlock`).
    pub extra_args: Vec<String>,
    /// How much of the host's stderr reaches the log.
    pub stderr: super::stderr::StderrLimits,
}

/// Why a host could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("creating the ring for host {host_id}: {source}")]
    Ring {
        host_id: String,
        #[source]
        source: wm_shared::ring::RingError,
    },
    #[error(
        "starting {path}: {source} (is the host-runner binary next to workmanager, or set HOST_RUNNER_PATH?)"
    )]
    Exec {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("watching host {0}: pidfd_open failed: {1}")]
    Pidfd(i32, #[source] std::io::Error),
    #[error("host {host_id} (pid {pid}) did not say Ready within {timeout:?}")]
    NotReady {
        host_id: String,
        pid: i32,
        timeout: Duration,
    },
    #[error("host {host_id} (pid {pid}) exited during start-up ({status})")]
    DiedAtStart {
        host_id: String,
        pid: i32,
        status: String,
    },
    #[error("the spawner thread is gone (the daemon is shutting down)")]
    SpawnerGone,
}

/// A started host: process, ring, link and the stream of frames it sends unasked.
pub struct SpawnedHost {
    pub pid: i32,
    pub region: Arc<Region>,
    pub link: HostLink,
    pub frames: mpsc::Receiver<Message>,
    pub ready: Ready,
    pub exit: ExitWatch,
}

/// How a host process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by {}", signal_name(*s)),
        }
    }
}

/// The conventional name of a signal number, e.g. `SIGSEGV`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Waits for a host's exit without a thread per host: a pidfd becomes readable when the
/// process exits; then it is reaped with `waitpid`.
pub struct ExitWatch {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    child: Option<Child>,
}

impl ExitWatch {
    /// Waits for the process to exit and reaps it.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    guard.clear_ready();
                    if let Some(status) = self.try_reap() {
                        return status;
                    }
                }
                Err(_) => {
                    // The reactor is gone (shutdown): fall back to a blocking reap.
                    return self.reap_blocking();
                }
            }
        }
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => Some(convert_status(st)),
            Ok(None) => None,
            Err(_) => Some(ExitStatus::Exited(-1)),
        }
    }

    fn reap_blocking(&mut self) -> ExitStatus {
        match self.child.as_mut().map(Child::wait) {
            Some(Ok(st)) => convert_status(st),
            _ => ExitStatus::Exited(-1),
        }
    }

    /// Sends SIGKILL (used for timeout reclaim and shutdown stragglers).
    pub fn kill(&self) {
        // pidfd_send_signal would be race-free; kill(pid) is safe here because the pid cannot
        // be reused before we reap it, and we reap only in this type.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        // Never leave a host behind: whoever drops the watch without reaping kills and reaps.
        if let Some(mut child) = self.child.take()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn convert_status(st: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitStatus::Exited(c),
        (None, Some(s)) => ExitStatus::Signaled(s),
        (None, None) => ExitStatus::Exited(-1),
    }
}

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// The one thread that forks hosts (see the module invariant).
#[derive(Clone)]
pub struct Spawner {
    tx: std::sync::mpsc::Sender<SpawnRequest>,
    config: Arc<SpawnConfig>,
}

impl Spawner {
    pub fn new(config: SpawnConfig) -> std::io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("host-spawner".into())
            .spawn(move || {
                while let Ok(mut req) = rx.recv() {
                    let _ = req.reply.send(req.command.spawn());
                }
            })?;
        Ok(Spawner {
            tx,
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &SpawnConfig {
        &self.config
    }

    /// Starts a host for `engine` and waits for its `Ready`.
    pub async fn spawn(
        &self,
        host_id: &str,
        engine: EngineKind,
    ) -> Result<SpawnedHost, SpawnError> {
        let cfg = &self.config;
        let region = Region::create(&format!("wm-{host_id}"), &cfg.ring).map_err(|source| {
            SpawnError::Ring {
                host_id: host_id.to_string(),
                source,
            }
        })?;
        let region = Arc::new(region);
        let ring_fd: RawFd = region.as_fd().as_raw_fd();

        let mut cmd = Command::new(&cfg.host_runner);
        cmd.arg("--ring-fd")
            .arg("3")
            .arg("--engine")
            .arg(match engine {
                EngineKind::DotNet => "dotnet",
                _ => "native",
            })
            .arg("--host-id")
            .arg(host_id)
            .arg("--rlimit-nofile")
            .arg(cfg.rlimit_nofile.to_string());
        if let Some(limit) = cfg.rlimit_as {
            cmd.arg("--rlimit-as").arg(limit.to_string());
        }
        cmd.args(&cfg.extra_args);
        cmd.env_clear();
        for (k, v) in host_env(cfg.dotnet_root.as_ref()) {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec, so it may only make
        // async-signal-safe calls: dup2 and fcntl are. `ring_fd` is a valid descriptor owned by
        // `region`, which outlives the spawn call (we hold it until the reply arrives), and it
        // is inherited by the forked child. dup2(fd, 3) when fd is already 3 keeps CLOEXEC set,
        // so the flag is cleared explicitly either way.
        unsafe {
            cmd.pre_exec(move || {
                if ring_fd != 3 && libc::dup2(ring_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(SpawnRequest {
                command: cmd,
                reply: reply_tx,
            })
            .map_err(|_| SpawnError::SpawnerGone)?;
        let mut child = reply_rx
            .await
            .map_err(|_| SpawnError::SpawnerGone)?
            .map_err(|source| SpawnError::Exec {
                path: cfg.host_runner.display().to_string(),
                source,
            })?;
        let pid = child.id() as i32;

        if let Some(stderr) = child.stderr.take() {
            super::stderr::forward(host_id, pid, stderr, cfg.stderr);
        }

        let pidfd = pidfd_open(pid).map_err(|e| SpawnError::Pidfd(pid, e))?;
        // SAFETY: `register` requires that the fd stays open and refers to the same file
        // description for the AsyncFd's whole life, and that `as_raw_fd` keeps returning it:
        // the OwnedFd is moved into the AsyncFd, nothing else holds or closes that descriptor,
        // and OwnedFd::as_raw_fd always returns the fd it owns.
        let pidfd = unsafe { AsyncFd::register(pidfd) }
            .map_err(|e| SpawnError::Pidfd(pid, std::io::Error::from(e)))?;
        let mut exit = ExitWatch {
            pid,
            pidfd,
            child: Some(child),
        };

        let (link, mut frames) = HostLink::new(region.clone());
        let ready = tokio::select! {
            status = exit.wait() => {
                link.peer_died();
                return Err(SpawnError::DiedAtStart { host_id: host_id.to_string(), pid, status: status.to_string() });
            }
            r = tokio::time::timeout(cfg.ready_timeout, wait_ready(&mut frames)) => match r {
                Ok(Some(ready)) => ready,
                _ => {
                    exit.kill();
                    let _ = exit.wait().await;
                    link.peer_died();
                    return Err(SpawnError::NotReady { host_id: host_id.to_string(), pid, timeout: cfg.ready_timeout });
                }
            }
        };
        Ok(SpawnedHost {
            pid,
            region,
            link,
            frames,
            ready,
            exit,
        })
    }
}

async fn wait_ready(frames: &mut mpsc::Receiver<Message>) -> Option<Ready> {
    while let Some(m) = frames.recv().await {
        if let Message::Ready(r) = m {
            return Some(r);
        }
        tracing::warn!("host sent a frame before Ready; ignored");
    }
    None
}

/// The environment a host starts with: an allow-list, nothing inherited by accident.
fn host_env(dotnet_root: Option<&PathBuf>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for key in ["PATH", "LANG", "TZ", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(key) {
            env.push((key.into(), v));
        }
    }
    if let Some(root) = dotnet_root {
        env.push(("DOTNET_ROOT".into(), root.clone().into_os_string()));
    }
    for (k, v) in [
        ("COMPlus_EnableDiagnostics", "0"),
        ("DOTNET_EnableDiagnostics", "0"),
        ("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1"),
        ("DOTNET_CLI_TELEMETRY_OPTOUT", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no pointers
    // are passed. PIDFD_NONBLOCK is not needed: we only poll it for readability.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
