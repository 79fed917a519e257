//! The REST API's listeners: TCP, TCP with TLS (rustls, reloaded on SIGHUP, optional client
//! certificates), and Unix sockets (mode 0660, a configurable group, peer uid).
//!
//! Every listener runs an accept task that hands finished connections, with who is on the
//! other end ([`Peer`]), to an [`ApiListener`], which `axum::serve` drives. TLS handshakes run
//! in their own tasks with a deadline, so a slow client cannot stall the accept loop. A TLS
//! reload swaps the `ServerConfig` used by the *next* handshakes; open connections keep theirs
//! and are never dropped.
//!
//! **Invariant:** a Unix socket is created by this daemon (a stale socket file nobody answers
//! on is replaced, a live one is an error), set to mode 0660 and the configured group before
//! the first accept, and removed when its listener stops.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wm_shared::sync::RwLocked as _;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ListenAddr, TlsSettings};

/// How long a TLS handshake may take.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// A connection of any listener.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// What kind of listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain TCP.
    Tcp,
    /// TCP with TLS.
    Tls,
    /// A Unix socket.
    Unix,
}

/// Who is on the other end of a connection (axum connect info; handlers and middleware read
/// it as `ConnectInfo<Peer>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The listener's kind.
    pub kind: ListenerKind,
    /// The remote TCP address (`None` on a Unix socket).
    pub addr: Option<SocketAddr>,
    /// The peer's uid (Unix sockets).
    pub uid: Option<u32>,
    /// The verified client certificate's subject common name (mTLS).
    pub client_cn: Option<String>,
}

/// A listener as `axum::serve` wants it.
pub struct ApiListener {
    rx: mpsc::Receiver<(Box<dyn Conn>, Peer)>,
    local: Peer,
    /// What `listen.addr` and the log show.
    pub display: String,
}

impl std::fmt::Debug for ApiListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiListener")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = Box<dyn Conn>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task stopped (shutdown): serve's graceful shutdown ends the loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local.clone())
    }
}

impl Connected<IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The TLS configuration, swapped on reload.
pub struct TlsState {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The DNS names of the certificate (its subjectAltName), which the Host guard accepts.
    names: RwLock<Vec<String>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the certificate, key and client CAs.
    pub fn load(settings: &TlsSettings) -> Result<Arc<TlsState>, String> {
        let (config, names) = build_config(settings)?;
        Ok(Arc::new(TlsState {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
            names: RwLock::new(names),
        }))
    }

    /// Reads the files again; on error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let (config, names) = build_config(&self.settings)?;
        *self.current.write_locked() = Arc::new(config);
        *self.names.write_locked() = names;
        Ok(())
    }

    /// The certificate's DNS names (lower-case).
    pub fn names(&self) -> Vec<String> {
        self.names.read_locked().clone()
    }

    fn acceptor(&self, alpn: Alpn) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read_locked().clone();
        match alpn {
            Alpn::Http1 => tokio_rustls::TlsAcceptor::from(current),
            Alpn::H2 => {
                // The same certificate, key and client CAs; only the protocol differs.
                let mut config = (*current).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                tokio_rustls::TlsAcceptor::from(Arc::new(config))
            }
        }
    }
}

fn build_config(s: &TlsSettings) -> Result<(ServerConfig, Vec<String>), String> {
    let certs = CertificateDer::pem_file_iter(&s.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", s.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (WORKMANAGER_TLS_CERT_FILE)",
            s.cert_file.display()
        ));
    }
    let names = dns_names(certs[0].as_ref());
    let key = PrivateKeyDer::from_pem_file(&s.key_file)
        .map_err(|e| format!("cannot read TLS key {}: {e}", s.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read client CA file {}: {e}", ca.display()))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            // Clients without a certificate may still authenticate with a token.
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, names))
}

/// Binds one listener and starts its accept task, which ends when `shutdown` is cancelled.
pub async fn bind(
    addr: &ListenAddr,
    tls: Option<Arc<TlsState>>,
    unix_group: Option<u32>,
    shutdown: CancellationToken,
) -> io::Result<ApiListener> {
    bind_with_alpn(addr, tls, unix_group, shutdown, Alpn::Http1).await
}

/// The protocol a TLS listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1`: the REST API.
    Http1,
    /// `h2`: the gRPC API (gRPC clients refuse a TLS server that does not select `h2`).
    H2,
}

/// [`bind`] with the ALPN protocol its TLS connections negotiate.
pub async fn bind_with_alpn(
    addr: &ListenAddr,
    tls: Option<Arc<TlsState>>,
    unix_group: Option<u32>,
    shutdown: CancellationToken,
    alpn: Alpn,
) -> io::Result<ApiListener> {
    let (tx, rx) = mpsc::channel::<(Box<dyn Conn>, Peer)>(64);
    match addr {
        ListenAddr::Tcp(a) => {
            let listener = tokio::net::TcpListener::bind(a).await?;
            let local_addr = listener.local_addr()?;
            let kind = if tls.is_some() {
                ListenerKind::Tls
            } else {
                ListenerKind::Tcp
            };
            tokio::spawn(accept_tcp(listener, tls, alpn, tx, shutdown));
            Ok(ApiListener {
                rx,
                local: Peer {
                    kind,
                    addr: Some(local_addr),
                    uid: None,
                    client_cn: None,
                },
                display: local_addr.to_string(),
            })
        }
        ListenAddr::Unix(path) => {
            let listener = bind_unix(path, unix_group).await?;
            tokio::spawn(accept_unix(
                listener,
                UnixCleanup(path.clone()),
                tx,
                shutdown,
            ));
            Ok(ApiListener {
                rx,
                local: Peer {
                    kind: ListenerKind::Unix,
                    addr: None,
                    uid: None,
                    client_cn: None,
                },
                display: format!("unix:{}", path.display()),
            })
        }
    }
}

async fn bind_unix(path: &Path, group: Option<u32>) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    // Until these two calls the socket has the umask's mode (0755 with the usual 022): no
    // other user can connect (connect(2) needs write permission) in between.
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Removes the socket file when the accept task ends.
struct UnixCleanup(PathBuf);

impl Drop for UnixCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn accept_error(e: &io::Error) {
    // EMFILE and friends: wait a little rather than spin.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_tcp(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<TlsState>>,
    alpn: Alpn,
    tx: mpsc::Sender<(Box<dyn Conn>, Peer)>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { accept_error(&e).await; continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let peer = Peer {
                    kind: ListenerKind::Tcp,
                    addr: Some(addr),
                    uid: None,
                    client_cn: None,
                };
                if tx.send((Box::new(stream), peer)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor(alpn);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let s = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cn = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| subject_common_name(c.as_ref()));
                    let peer = Peer {
                        kind: ListenerKind::Tls,
                        addr: Some(addr),
                        uid: None,
                        client_cn,
                    };
                    let _ = tx.send((Box::new(s), peer)).await;
                });
            }
        }
    }
}

async fn accept_unix(
    listener: tokio::net::UnixListener,
    _cleanup: UnixCleanup,
    tx: mpsc::Sender<(Box<dyn Conn>, Peer)>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { accept_error(&e).await; continue; }
            },
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let peer = Peer {
            kind: ListenerKind::Unix,
            addr: None,
            uid,
            client_cn: None,
        };
        if tx.send((Box::new(stream), peer)).await.is_err() {
            return;
        }
    }
}

/// One DER element: (tag, contents, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The elements of `tbsCertificate` after the optional version: serial, signature algorithm,
/// issuer, validity, subject, subjectPublicKeyInfo, then the optional tagged ones.
fn tbs_fields(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, rest) = der(tbs)?;
    Some(if tag == 0xa0 { rest } else { tbs })
}

/// The DNS names of a DER certificate's subjectAltName extension, lower-case.
pub fn dns_names(cert: &[u8]) -> Vec<String> {
    let walk = || -> Option<Vec<String>> {
        let mut f = tbs_fields(cert)?;
        for _ in 0..6 {
            f = der(f)?.2;
        }
        // [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions.
        while !f.is_empty() {
            let (tag, content, rest) = der(f)?;
            f = rest;
            if tag != 0xa3 {
                continue;
            }
            let (_, mut exts, _) = der(content)?;
            while !exts.is_empty() {
                let (_, ext, rest) = der(exts)?;
                exts = rest;
                let (_, oid, mut more) = der(ext)?;
                if oid != [0x55, 0x1d, 0x11] {
                    continue;
                }
                // An optional BOOLEAN `critical` comes before the value.
                let (tag, _, after) = der(more)?;
                if tag == 0x01 {
                    more = after;
                }
                let (_, octets, _) = der(more)?;
                let (_, mut names, _) = der(octets)?;
                let mut out = Vec::new();
                while !names.is_empty() {
                    let (tag, name, rest) = der(names)?;
                    names = rest;
                    if tag == 0x82
                        && let Ok(n) = std::str::from_utf8(name)
                    {
                        out.push(n.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
                return Some(out);
            }
        }
        Some(Vec::new())
    };
    walk().unwrap_or_default()
}

/// The subject common name of a DER certificate (walks `Certificate.tbsCertificate.subject`).
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let mut tbs = tbs_fields(cert)?;
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (_, mut subject, _) = der(tbs)?;
    while !subject.is_empty() {
        let (_, set, rest) = der(subject)?;
        subject = rest;
        let (_, atv, _) = der(set)?;
        let (_, oid, value) = der(atv)?;
        if oid == [0x55, 0x04, 0x03] {
            let (_, v, _) = der(value)?;
            return String::from_utf8(v.to_vec()).ok();
        }
    }
    None
}
