//! Wiring: opens the data directory, builds the control plane and the router, binds, runs
//! recovery, serves until cancelled, then drains and shuts the runtime down.
//!
//! Start-up order:
//! 1. create the data directory (mode 0700) and take its lock file, so two daemons never
//!    share one registry;
//! 2. open the registry (migrations) and the code store (sweep interrupted writes);
//! 3. build the runtime (given the registry, so it can report status changes);
//! 4. bind, log the address, write `<data-dir>/listen.addr`;
//! 5. recovery in the background; `/health` turns ready when it is done.
//!
//! Shutdown (token cancelled): stop accepting, let in-flight requests finish (each is bounded
//! by the request timeout, the whole drain by `WORKMANAGER_SHUTDOWN_TIMEOUT_SECONDS`),
//! `Runtime::shutdown`, wait for tracked tasks, close the store.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::codestore::{CodeStore, CodeStoreError};
use crate::config::{Config, ListenAddr};
use crate::control::Control;
use crate::listen::{self, TlsState};
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError, SqliteStore, Store};
use crate::runtime::Runtime;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory could not be prepared.
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the data directory.
    #[error(
        "data directory {0} is in use by another workmanager (lock file {0}/lock); stop it or use another --data-dir"
    )]
    Locked(PathBuf),
    /// The registry failed to open.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The code store failed to open.
    #[error(transparent)]
    CodeStore(#[from] CodeStoreError),
    /// The TLS files could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A daemon ready to [`run`](Daemon::run).
pub struct Daemon {
    config: Arc<Config>,
    state: AppState,
    tracker: TaskTracker,
    /// Routes other parts add (the bus's `/v1/topics/*`), served behind the same middleware.
    extra_routes: Router,
    /// Held for the daemon's lifetime: the data directory lock.
    _lock: File,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn prepare_data_dir(dir: &Path) -> Result<File, DaemonError> {
    let err = |source| DaemonError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(err)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

impl Daemon {
    /// Opens the data directory and builds everything; `make_runtime` gets the registry so
    /// the runtime can report status changes through [`Registry::set_status`].
    pub fn new(
        config: Config,
        make_runtime: impl FnOnce(&Registry) -> Arc<dyn Runtime>,
    ) -> Result<Daemon, DaemonError> {
        Daemon::with_store(config, |local, _| Ok(Arc::new(local)), make_runtime)
    }

    /// [`Daemon::new`] with another registry store built over the local SQLite one (the
    /// cluster registry, `REGISTRY_BACKEND=jetstream`): `open_store` runs once the data
    /// directory is locked.
    pub fn with_store(
        config: Config,
        open_store: impl FnOnce(SqliteStore, &CodeStore) -> Result<Arc<dyn Store>, RegistryError>,
        make_runtime: impl FnOnce(&Registry) -> Arc<dyn Runtime>,
    ) -> Result<Daemon, DaemonError> {
        let mut config = config;
        if let Some(t) = &config.api_token
            && !config.security.tokens.iter().any(|e| e.name == "api-token")
        {
            // Set after parsing (tests, embedders): the legacy token is an admin token.
            config.security.tokens.push(crate::api::auth::TokenEntry {
                name: "api-token".into(),
                sha256: crate::api::auth::hash_token(t),
                scopes: vec![crate::api::auth::Scope::Admin],
            });
        }
        let lock = prepare_data_dir(&config.data_dir)?;
        let local = SqliteStore::open(&config.data_dir.join("registry.db"))?;
        let codes = CodeStore::open(&config.data_dir)?;
        codes.sweep_temporaries();
        let registry = Registry::new(open_store(local, &codes)?);
        let runtime = make_runtime(&registry);
        let config = Arc::new(config);
        let security = Arc::new(api::Security::new(&config.security));
        let control = Arc::new(Control::new(
            registry,
            codes,
            runtime,
            config.clone(),
            Arc::new(Metrics::default()),
        ));
        Ok(Daemon {
            config,
            state: AppState { control, security },
            tracker: TaskTracker::new(),
            extra_routes: Router::new(),
            _lock: lock,
        })
    }

    /// The router with its request timeout (for in-process tests too).
    pub fn router(&self) -> Router {
        let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            self.config.request_timeout,
        );
        api::router_with(self.state.clone(), self.extra_routes.clone()).layer(timeout)
    }

    /// Adds routes served next to the API, behind the same auth, metrics, body limit and
    /// timeout (e.g. `api::topics::router(bus)`). They must not set a fallback.
    pub fn add_routes(&mut self, routes: Router) {
        self.extra_routes = std::mem::take(&mut self.extra_routes).merge(routes);
    }

    /// Adds series to `/metrics` (e.g. `move |out| bus.render_prometheus(out)`).
    pub fn add_metrics(&self, source: impl Fn(&mut String) + Send + Sync + 'static) {
        self.state.control.metrics().add_source(Box::new(source));
    }

    /// The background task tracker: tasks spawned on it are awaited (bounded) at shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The control plane.
    pub fn control(&self) -> &Arc<Control> {
        &self.state.control
    }

    /// The audit trail (add sinks to publish its records).
    pub fn audit(&self) -> &Arc<crate::audit::Audit> {
        &self.state.security.audit
    }

    /// Binds every listener, recovers, serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let sec = &self.config.security;
        let tls = match &sec.tls {
            Some(t) => Some(TlsState::load(t).map_err(DaemonError::Tls)?),
            None => None,
        };
        let remote = self.config.remote_listeners();
        let secure = tls.is_some() && sec.auth_enabled();
        if !(remote.is_empty() || secure) {
            // Only reachable with --allow-insecure-remote (Config refuses it otherwise).
            tracing::warn!(
                listeners = ?remote,
                "--allow-insecure-remote: serving a non-loopback address without TLS and authentication; anyone who reaches it can deploy and run native code"
            );
        }
        if !sec.auth_enabled() {
            tracing::info!(
                "no API tokens configured: loopback TCP callers have every scope (see docs/security.md to require tokens)"
            );
        }
        let accept_stop = shutdown.child_token();
        let mut listeners = Vec::new();
        let mut shown = Vec::new();
        for addr in &self.config.listen {
            let tls_here = match addr {
                ListenAddr::Tcp(_) => tls.clone(),
                ListenAddr::Unix(_) => None,
            };
            let l = listen::bind(addr, tls_here, sec.unix_socket_group, accept_stop.clone())
                .await
                .map_err(|source| DaemonError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(address = %l.display, tls = matches!(addr, ListenAddr::Tcp(_)) && tls.is_some(), data_dir = %self.config.data_dir.display(), "listening");
            shown.push(l.display.clone());
            listeners.push(l);
        }
        let grpc_listeners =
            crate::grpc::server::bind_all(&self.config, tls.clone(), accept_stop.clone()).await?;
        write_listen_addr(&self.config.data_dir, &shown);
        if let Some(tls) = tls.clone() {
            self.state.security.set_tls_names(tls.names());
            let token = shutdown.clone();
            self.tracker
                .spawn(reload_on_sighup(tls, self.state.security.clone(), token));
        }

        let control = self.state.control.clone();
        self.tracker.spawn(async move {
            match control.startup_recovery().await {
                Ok(n) => tracing::info!(recovered = n, "recovery finished; ready"),
                Err(e) => tracing::error!(error = %e, "recovery failed; /health stays unready"),
            }
        });

        let app = self.router();
        let servers = listeners.into_iter().map(|l| {
            let app = app
                .clone()
                .into_make_service_with_connect_info::<listen::Peer>();
            let token = shutdown.clone();
            async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
            }
        });
        let server = futures_util::future::join_all(servers);
        let grpc = crate::grpc::server::serve(grpc_listeners, self.state.clone(), shutdown.clone());
        let server = async move {
            let (rest, grpc) = tokio::join!(server, grpc);
            if let Err(e) = grpc {
                tracing::error!(error = %e, "the gRPC server failed");
            }
            rest
        };
        let drain = self.config.shutdown_timeout;
        let result = tokio::select! {
            r = server => r.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ()).map_err(DaemonError::Serve),
            () = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(seconds = drain.as_secs(), "in-flight requests did not finish in time; closing them");
                Ok(())
            }
        };
        accept_stop.cancel();
        tracing::info!("HTTP server stopped; stopping the runtime");
        self.state.control.runtime().shutdown(drain).await;
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not finish in time");
        }
        let _ = std::fs::remove_file(self.config.data_dir.join("listen.addr"));
        let _ = std::fs::remove_file(self.config.data_dir.join("listen.addrs"));
        let _ = std::fs::remove_file(self.config.data_dir.join("grpc.addr"));
        tracing::info!("stopped");
        result
    }
}

/// Reloads the TLS certificate, key and client CAs on every SIGHUP until `token` is
/// cancelled. Open connections keep their session; a failed reload keeps the old files.
async fn reload_on_sighup(
    tls: Arc<TlsState>,
    security: Arc<api::Security>,
    token: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; TLS files will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => {
                security.set_tls_names(tls.names());
                tracing::info!("SIGHUP: TLS certificate and key reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificate stays in use")
            }
        }
    }
}

/// Writes `<data-dir>/listen.addrs` (every listener, one per line in `--listen` order), then
/// `<data-dir>/listen.addr` (the first one, as before several listeners existed), each
/// atomically; tests wait for `listen.addr` with `--listen 127.0.0.1:0`.
fn write_listen_addr(dir: &Path, addrs: &[String]) {
    let all: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let first = addrs.first().map(|a| format!("{a}\n")).unwrap_or_default();
    for (name, text) in [("listen.addrs", all), ("listen.addr", first)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let dst = dir.join(name);
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &dst));
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %dst.display(), "cannot write the listen address file");
        }
    }
}
