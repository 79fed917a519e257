//! Starting one host-runner process: memfd ring, fork+exec, pidfd, `Ready`.
//!
//! **Invariant:** hosts are forked only from the dedicated spawner thread. The host sets
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it exits; tokio's blocking
//! threads come and go, so forking from one of them would kill hosts at random. The spawner
//! thread lives as long as the process.
//!
//! The child gets exactly: the ring memfd as fd 3, stderr as a pipe we log line by line,
//! stdin/stdout on /dev/null, and an environment reset to an allow-list; it starts in its own
//! PID, network and IPC namespaces where the kernel lets us (`launch.rs`), and switches to
//! the unprivileged `HOST_UID`/`HOST_GID` itself before it drops its capabilities.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use wm_shared::protocol::link::HostLink;
use wm_shared::protocol::{EngineKind, Message, Ready};
use wm_shared::ring::{Region, RingConfig};

use crate::worker_limits::WorkerLimits;

/// Who reads a host's replies (`HOST_LINK_READER`; docs/ring.md, "The runtime reads its
/// lanes", and docs/benchmarks.md, session 8's re-run, for the trade-off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkReader {
    /// A reader thread per host: spins briefly, then sleeps on the ring's doorbell futex. Its
    /// work runs beside the runtime's, on another CPU.
    #[default]
    Thread,
    /// A task on the async runtime awaiting the host's doorbell eventfd: a reply wakes the
    /// runtime thread directly (one thread wake-up less per call).
    Runtime,
}

/// What it takes to start hosts.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// Path of the `host-runner` binary.
    pub host_runner: PathBuf,
    pub ring: RingConfig,
    /// `RLIMIT_AS` of each native host, if set (`HOST_RLIMIT_AS_BYTES`). .NET hosts never get
    /// one: CoreCLR reserves gigabytes of address space it does not use (docs/chaos.md).
    pub rlimit_as: Option<u64>,
    /// The GC heap hard limit of each .NET host, if set
    /// (`HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES`): their memory bound in place of `RLIMIT_AS`.
    pub gc_heap_hard_limit: Option<u64>,
    pub rlimit_nofile: u64,
    /// Where the .NET runtime lives (passed as `DOTNET_ROOT`).
    pub dotnet_root: Option<PathBuf>,
    /// How long a new host may take to say `Ready`.
    pub ready_timeout: Duration,
    /// Extra arguments (debugging only: `--no-seccomp`, `--no-landlock`).
    pub extra_args: Vec<String>,
    /// How much of the host's stderr reaches the log.
    pub stderr: super::stderr::StderrLimits,
    /// The sandbox layers beyond the always-on ones.
    pub sandbox: SandboxSettings,
    /// `PYTHON_BLOCKED_MODULES`, for python hosts' import hook.
    pub python_blocked_modules: Vec<String>,
    /// Who reads the host's replies (`HOST_LINK_READER`).
    pub link_reader: LinkReader,
}

/// How hosts are sandboxed, from `SANDBOX_*` and `HOST_UID`/`HOST_GID`.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Apply Landlock where the kernel has it (`SANDBOX_LANDLOCK=off` turns it off).
    pub landlock: bool,
    /// Start hosts in their own PID, network and IPC namespaces.
    pub namespaces: bool,
    /// The uid and gid hosts run as (None: the daemon's own, when it is not root).
    pub host_ids: Option<(u32, u32)>,
    /// Layers without which no host may run (`SANDBOX_REQUIRE`).
    pub require: Vec<super::layers::Layer>,
    /// Where each host gets its private temp folder (`<data>/hosts/<host id>/`), if anywhere.
    pub tmp_root: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            landlock: true,
            namespaces: true,
            host_ids: None,
            require: Vec::new(),
            tmp_root: None,
        }
    }
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
    #[error(
        "host {host_id} (pid {pid}) runs without the sandbox layer '{layer}', which SANDBOX_REQUIRE asks for ({why}); it was stopped"
    )]
    MissingLayer {
        host_id: String,
        pid: i32,
        layer: &'static str,
        why: String,
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
    /// The host's private temp folder, removed when this value is dropped.
    pub tmp_dir: Option<TmpDir>,
    /// The sandbox layers this host runs under.
    pub layers: super::layers::HostLayers,
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
    /// The status once reaped; until then the pid is ours and cannot be reused.
    reaped: Option<ExitStatus>,
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
        if let Some(st) = &self.reaped {
            return Some(st.clone());
        }
        let mut status = 0;
        // SAFETY: waits for our own child without blocking, writing into a live i32.
        let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        let st = match rc {
            0 => return None,
            rc if rc == self.pid => convert_status(status),
            _ => ExitStatus::Exited(-1),
        };
        self.reaped = Some(st.clone());
        Some(st)
    }

    fn reap_blocking(&mut self) -> ExitStatus {
        if let Some(st) = &self.reaped {
            return st.clone();
        }
        let st = super::launch::reap(self.pid)
            .map(convert_status)
            .unwrap_or(ExitStatus::Exited(-1));
        self.reaped = Some(st.clone());
        st
    }

    /// Sends SIGKILL (used for timeout reclaim and shutdown stragglers).
    pub fn kill(&self) {
        if self.reaped.is_some() {
            return;
        }
        // SAFETY: pidfd_send_signal with our own pidfd, a signal number and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        // Never leave a host behind: whoever drops the watch without reaping kills and reaps.
        if self.try_reap().is_none() {
            self.kill();
            self.reap_blocking();
        }
    }
}

fn convert_status(status: i32) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Exited(-1)
    }
}

struct SpawnRequest {
    spec: super::launch::LaunchSpec,
    reply: oneshot::Sender<std::io::Result<super::launch::Launched>>,
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
                while let Ok(req) = rx.recv() {
                    let launched = super::launch::launch(&req.spec);
                    if let Err(Ok(l)) = req.reply.send(launched) {
                        // Nobody waits for this host any more (the caller was cancelled).
                        super::launch::kill_and_reap(l.pid);
                    }
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

    /// Starts a host for `engine` with the engine's limits and waits for its `Ready`.
    pub async fn spawn(
        &self,
        host_id: &str,
        engine: EngineKind,
    ) -> Result<SpawnedHost, SpawnError> {
        self.spawn_with(host_id, engine, &WorkerLimits::default())
            .await
    }

    /// [`Spawner::spawn`] with a worker's own `limits` in place of the engine's settings.
    pub async fn spawn_with(
        &self,
        host_id: &str,
        engine: EngineKind,
        limits: &WorkerLimits,
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
        let bell_fd: Option<RawFd> = region.bell_fd().map(|b| b.as_raw_fd());

        let mut args = host_args(cfg, host_id, engine, limits);
        let tmp_dir = match &cfg.sandbox.tmp_root {
            Some(root) => Some(TmpDir::create(root, host_id, cfg.sandbox.host_ids).map_err(
                |source| SpawnError::Exec {
                    path: root.join(host_id).display().to_string(),
                    source,
                },
            )?),
            None => None,
        };
        args.extend(cfg.extra_args.iter().cloned());
        let spec = super::launch::LaunchSpec {
            program: cfg.host_runner.clone(),
            args,
            env: {
                // By environment, not argument: a sibling could read arguments in
                // /proc/<pid>/cmdline, and the folder's name is what keeps it private.
                let mut env = host_env(cfg.dotnet_root.as_ref());
                if let Some(t) = &tmp_dir {
                    env.push(("TMPDIR".into(), t.path.clone().into_os_string()));
                }
                env
            },
            ring_fd,
            bell_fd,
            namespaces: cfg.sandbox.namespaces,
            tmp_dir: tmp_dir.as_ref().map(|t| t.path.clone()),
        };

        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(SpawnRequest {
                spec,
                reply: reply_tx,
            })
            .map_err(|_| SpawnError::SpawnerGone)?;
        let launched = reply_rx
            .await
            .map_err(|_| SpawnError::SpawnerGone)?
            .map_err(|source| SpawnError::Exec {
                path: cfg.host_runner.display().to_string(),
                source,
            })?;
        let pid = launched.pid;
        let namespaces = launched.namespaces;

        super::stderr::forward(host_id, pid, launched.stderr, cfg.stderr);

        // SAFETY: `register` requires that the fd stays open and refers to the same file
        // description for the AsyncFd's whole life, and that `as_raw_fd` keeps returning it:
        // the OwnedFd is moved into the AsyncFd, nothing else holds or closes that descriptor,
        // and OwnedFd::as_raw_fd always returns the fd it owns.
        let pidfd = match unsafe { AsyncFd::register(launched.pidfd) } {
            Ok(fd) => fd,
            Err(e) => {
                // Without the pidfd nobody would ever reap it: end it now.
                super::launch::kill_and_reap(pid);
                return Err(SpawnError::Pidfd(pid, std::io::Error::from(e)));
            }
        };
        let mut exit = ExitWatch {
            pid,
            pidfd,
            reaped: None,
        };

        // `runtime`: the reader is a task on this runtime awaiting the doorbell eventfd (fd 4
        // in the child), so a host's reply wakes the runtime thread directly; `thread`: a
        // reader thread, which takes the ring reading off the runtime (throughput under load
        // with few runtime threads). The host gets the eventfd either way and signals whichever
        // way the reader announced it sleeps.
        let (link, mut frames) = match cfg.link_reader {
            LinkReader::Runtime => HostLink::new_async(region.clone()),
            LinkReader::Thread => HostLink::new(region.clone()),
        };
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
        let layers = super::layers::HostLayers::from_ready(&ready.sandbox, namespaces);
        if let Some((layer, why)) = layers.first_missing(&cfg.sandbox.require) {
            exit.kill();
            let _ = exit.wait().await;
            link.peer_died();
            return Err(SpawnError::MissingLayer {
                host_id: host_id.to_string(),
                pid,
                layer: layer.name(),
                why,
            });
        }
        Ok(SpawnedHost {
            pid,
            tmp_dir,
            layers,
            region,
            link,
            frames,
            ready,
            exit,
        })
    }
}

/// The host-runner's command line for a host of `engine` (without the extra debugging
/// arguments). Memory limits are per engine: `RLIMIT_AS` for native hosts, the GC heap hard
/// limit for .NET hosts (which also prestart CoreCLR); a worker's own `limits` replace the
/// engine's settings (`crate::worker_limits`).
fn host_args(
    cfg: &SpawnConfig,
    host_id: &str,
    engine: EngineKind,
    limits: &WorkerLimits,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--ring-fd".into(),
        "3".into(),
        "--bell-fd".into(),
        "4".into(),
        "--engine".into(),
        match engine {
            EngineKind::DotNet => "dotnet",
            EngineKind::Python => "python",
            _ => "native",
        }
        .into(),
        "--host-id".into(),
        host_id.into(),
        "--rlimit-nofile".into(),
        cfg.rlimit_nofile.to_string(),
    ];
    match engine {
        EngineKind::DotNet => {
            if let Some(limit) = limits.memory_bytes.or(cfg.gc_heap_hard_limit) {
                args.extend(["--gc-heap-hard-limit".into(), limit.to_string()]);
            }
            // CoreCLR and the bridge start before Ready: a standby host is warm, and a
            // fresh host's first load does not pay for them.
            args.push("--prestart".into());
        }
        _ => {
            if let Some(limit) = limits.memory_bytes.or(cfg.rlimit_as) {
                args.extend(["--rlimit-as".into(), limit.to_string()]);
            }
        }
    }
    if let Some((uid, gid)) = cfg.sandbox.host_ids {
        args.extend([
            "--uid".into(),
            uid.to_string(),
            "--gid".into(),
            gid.to_string(),
        ]);
    }
    if !cfg.sandbox.landlock {
        args.push("--no-landlock".into());
    }
    if engine == EngineKind::Python {
        args.extend([
            "--python-blocked-modules".into(),
            cfg.python_blocked_modules.join(","),
        ]);
    }
    args
}

/// A host's private temp folder: owned by the host's uid, 0700, removed on drop (after the
/// host is gone).
#[derive(Debug)]
pub struct TmpDir {
    pub path: PathBuf,
}

impl TmpDir {
    fn create(
        root: &std::path::Path,
        host_id: &str,
        ids: Option<(u32, u32)>,
    ) -> std::io::Result<TmpDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root)?;
        // Traversable, not listable: a host finds its own folder by its unguessable name and
        // no other (all hosts share HOST_UID; the mount namespace keeps siblings' folders
        // read-only, the name keeps them unknown).
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
        let mut nonce = [0u8; 12];
        getrandom_fill(&mut nonce)?;
        let path = root.join(format!("{host_id}-{}", hex_of(&nonce)));
        // A leftover of a daemon that was killed: start empty.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(TmpDir { path })
    }
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: getrandom writes at most buf.len() bytes into the live buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SpawnConfig {
        SpawnConfig {
            host_runner: PathBuf::from("/nonexistent/host-runner"),
            ring: RingConfig::default(),
            rlimit_as: Some(256 << 20),
            gc_heap_hard_limit: Some(64 << 20),
            rlimit_nofile: 1024,
            dotnet_root: None,
            ready_timeout: Duration::from_secs(1),
            extra_args: Vec::new(),
            stderr: super::super::stderr::StderrLimits {
                line_max_bytes: 4096,
                lines_per_second: 200,
            },
            sandbox: SandboxSettings::default(),
            python_blocked_modules: vec!["subprocess".into()],
            link_reader: LinkReader::Runtime,
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    /// Memory limits are per engine: a tight RLIMIT_AS for native plugins never reaches a
    /// .NET host (CoreCLR needs gigabytes of address space), which gets its GC heap limit.
    #[test]
    fn native_hosts_get_rlimit_as_and_dotnet_hosts_the_gc_heap_hard_limit() {
        let cfg = config();
        let none = WorkerLimits::default();
        let native = host_args(&cfg, "n.1", EngineKind::Native, &none);
        assert_eq!(value_of(&native, "--rlimit-as"), Some("268435456"));
        assert_eq!(value_of(&native, "--gc-heap-hard-limit"), None);
        assert!(!native.iter().any(|a| a == "--prestart"));

        let dotnet = host_args(&cfg, "d.1", EngineKind::DotNet, &none);
        assert_eq!(value_of(&dotnet, "--rlimit-as"), None);
        assert_eq!(value_of(&dotnet, "--gc-heap-hard-limit"), Some("67108864"));
        assert!(dotnet.iter().any(|a| a == "--prestart"));
    }

    /// A worker's own memory limit replaces the engine's setting, by the engine's mechanism,
    /// and applies where the engine has no setting at all.
    #[test]
    fn a_workers_memory_limit_replaces_the_engine_setting_by_the_engines_mechanism() {
        let mut cfg = config();
        let own = WorkerLimits {
            memory_bytes: Some(96 << 20),
        };
        let native = host_args(&cfg, "n.1", EngineKind::Native, &own);
        assert_eq!(value_of(&native, "--rlimit-as"), Some("100663296"));
        assert_eq!(value_of(&native, "--gc-heap-hard-limit"), None);
        let python = host_args(&cfg, "p.1", EngineKind::Python, &own);
        assert_eq!(value_of(&python, "--rlimit-as"), Some("100663296"));
        let dotnet = host_args(&cfg, "d.1", EngineKind::DotNet, &own);
        assert_eq!(value_of(&dotnet, "--gc-heap-hard-limit"), Some("100663296"));
        assert_eq!(value_of(&dotnet, "--rlimit-as"), None);

        cfg.rlimit_as = None;
        cfg.gc_heap_hard_limit = None;
        let none = WorkerLimits::default();
        assert_eq!(
            value_of(
                &host_args(&cfg, "n.2", EngineKind::Native, &none),
                "--rlimit-as"
            ),
            None
        );
        assert_eq!(
            value_of(
                &host_args(&cfg, "n.3", EngineKind::Native, &own),
                "--rlimit-as"
            ),
            Some("100663296")
        );
    }
}
