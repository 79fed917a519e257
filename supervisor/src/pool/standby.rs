//! Warm standby hosts (`HOST_STANDBY`): the zygote idea without forking a threaded process.
//!
//! For each engine the pool has used, a keeper task holds one host that is already spawned,
//! sandboxed and `Ready` (for .NET with CoreCLR started and the bridge loaded: the host is
//! started with `--prestart`), and idle. When a slot needs a host (a respawn after a crash, or
//! a new slot), it adopts the standby and only loads its workers; the keeper then spawns the
//! next standby off the critical path. A standby that dies while idle is replaced after a
//! backoff; at shutdown it is stopped like any host, and its `PR_SET_PDEATHSIG` ends it if the
//! daemon dies without a shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wm_shared::protocol::EngineKind;

use super::spawn::{SpawnedHost, Spawner};
use super::{backoff, engine_name, from_protocol_engine, lock, stop_host};

/// How long an adopter waits for the keeper to hand over its host before spawning instead.
const HANDOVER_WAIT: Duration = Duration::from_millis(200);
/// How long after a handover the next standby is spawned: the adopter is reloading its workers
/// and answering its first calls now, and on a small machine a spawn (exec, sandbox, for .NET
/// CoreCLR) beside it doubled the native respawn time (compare bench, docs/benchmarks.md).
const REPLACE_AFTER: Duration = Duration::from_millis(250);

/// A standby host as `/v1/hosts` shows it.
#[derive(Debug, Clone)]
pub struct StandbyInfo {
    pub id: String,
    pub pid: i32,
    pub engine: crate::runtime::EngineKind,
    /// Resident set size, bytes (from `/proc/<pid>/statm`; 0 if unreadable).
    pub rss_bytes: u64,
}

/// One engine's keeper: its task holds the host; adopters ask through `requests`.
struct Keeper {
    requests: mpsc::Sender<oneshot::Sender<SpawnedHost>>,
    /// (id, pid) of the standby while one is idle and ready.
    ready: Mutex<Option<(String, i32)>>,
}

/// The standby hosts of a pool.
pub struct Standbys {
    enabled: bool,
    spawner: Spawner,
    backoff_base: Duration,
    keepers: Mutex<HashMap<EngineKind, Arc<Keeper>>>,
    next: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Standbys {
    pub fn new(
        enabled: bool,
        spawner: Spawner,
        backoff_base: Duration,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Standbys {
        Standbys {
            enabled,
            spawner,
            backoff_base,
            keepers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            shutdown,
            tasks,
        }
    }

    /// Starts keeping a standby for `engine` (once per engine; nothing when off).
    pub fn ensure(self: &Arc<Self>, engine: EngineKind) {
        if !self.enabled || self.shutdown.is_cancelled() {
            return;
        }
        let mut keepers = lock(&self.keepers);
        if keepers.contains_key(&engine) {
            return;
        }
        let (tx, rx) = mpsc::channel(1);
        let keeper = Arc::new(Keeper {
            requests: tx,
            ready: Mutex::new(None),
        });
        keepers.insert(engine, keeper.clone());
        drop(keepers);
        let this = Arc::clone(self);
        self.tasks
            .spawn(async move { this.keep(engine, keeper, rx).await });
    }

    /// The idle standby of `engine`, handed over to the caller, if one is ready now.
    pub async fn adopt(&self, engine: EngineKind) -> Option<SpawnedHost> {
        if !self.enabled {
            return None;
        }
        let keeper = lock(&self.keepers).get(&engine).cloned()?;
        lock(&keeper.ready).as_ref()?;
        let (tx, rx) = oneshot::channel();
        keeper.requests.try_send(tx).ok()?;
        // If this wait gives up, the keeper's send fails and it keeps the host.
        tokio::time::timeout(HANDOVER_WAIT, rx).await.ok()?.ok()
    }

    /// The standby hosts idle now.
    pub fn list(&self) -> Vec<StandbyInfo> {
        let keepers: Vec<(EngineKind, Arc<Keeper>)> = lock(&self.keepers)
            .iter()
            .map(|(e, k)| (*e, k.clone()))
            .collect();
        let mut out: Vec<StandbyInfo> = keepers
            .into_iter()
            .filter_map(|(engine, k)| {
                let (id, pid) = lock(&k.ready).clone()?;
                Some(StandbyInfo {
                    id,
                    pid,
                    engine: from_protocol_engine(engine),
                    rss_bytes: rss_of(pid),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The keeper task of one engine: spawn, wait idle until adopted, died or shut down.
    async fn keep(
        &self,
        engine: EngineKind,
        keeper: Arc<Keeper>,
        mut requests: mpsc::Receiver<oneshot::Sender<SpawnedHost>>,
    ) {
        let mut failures: u32 = 0;
        while !self.shutdown.is_cancelled() {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}-standby-{n}", engine_name(engine));
            let spawned = tokio::select! {
                r = self.spawner.spawn(&id, engine) => r,
                _ = self.shutdown.cancelled() => return,
            };
            let mut host = match spawned {
                Ok(h) => h,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(self.backoff_base, Duration::from_secs(30), failures);
                    tracing::warn!(
                        engine = engine_name(engine),
                        "no standby host: {e}; retrying in {delay:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            };
            tracing::debug!(host = %id, pid = host.pid, "standby host ready");
            *lock(&keeper.ready) = Some((id.clone(), host.pid));
            loop {
                enum Next {
                    Died(super::ExitStatus),
                    Asked(Option<oneshot::Sender<SpawnedHost>>),
                    Stop,
                }
                let next = tokio::select! {
                    status = host.exit.wait() => Next::Died(status),
                    asked = requests.recv() => Next::Asked(asked),
                    _ = self.shutdown.cancelled() => Next::Stop,
                };
                match next {
                    Next::Asked(Some(reply)) => {
                        *lock(&keeper.ready) = None;
                        match reply.send(host) {
                            Ok(()) => {
                                tracing::debug!(host = %id, "standby host adopted");
                                failures = 0;
                                tokio::select! {
                                    _ = tokio::time::sleep(REPLACE_AFTER) => {}
                                    _ = self.shutdown.cancelled() => return,
                                }
                                break;
                            }
                            // The adopter gave up waiting: keep it.
                            Err(back) => {
                                host = back;
                                *lock(&keeper.ready) = Some((id.clone(), host.pid));
                            }
                        }
                    }
                    Next::Died(status) => {
                        *lock(&keeper.ready) = None;
                        host.link.peer_died();
                        failures = failures.saturating_add(1);
                        let delay = backoff(self.backoff_base, Duration::from_secs(30), failures);
                        tracing::warn!(host = %id, pid = host.pid, "idle standby host ended: {status}; a new one in {delay:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.shutdown.cancelled() => return,
                        }
                        break;
                    }
                    Next::Asked(None) | Next::Stop => {
                        *lock(&keeper.ready) = None;
                        let status = stop_host(&mut host).await;
                        host.link.peer_died();
                        tracing::debug!(host = %id, "standby host stopped: {status}");
                        return;
                    }
                }
            }
        }
    }
}

/// Resident bytes of `pid` from `/proc/<pid>/statm` (0 when it cannot be read).
fn rss_of(pid: i32) -> u64 {
    // SAFETY: sysconf takes an integer only.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}
