//! Serving the gRPC API on the listeners `listen.rs` binds (the REST listener rules: loopback
//! TCP, TLS with the same certificate and client CAs but ALPN `h2`, `unix:/path` sockets with
//! their peer uid), with server reflection (v1 and v1alpha, scope `read`, like `/openapi.json`)
//! and `grpc.health.v1` (public, like `/health`: `NOT_SERVING` until the start-up recovery
//! finished).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use super::ops::Ops;
use super::pb::work_manager_server::WorkManagerServer;
use super::service::WorkManagerService;
use crate::api::AppState;
use crate::api::auth::Need;
use crate::listen::{ApiListener, Conn, Peer};

/// One accepted connection with who is on the other end; tonic puts the [`Peer`] into each
/// request's extensions, where authorization reads it.
pub struct GrpcConn {
    io: Box<dyn Conn>,
    peer: Peer,
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections of one listener, as the stream tonic serves.
fn incoming(
    listener: ApiListener,
) -> impl futures_util::Stream<Item = std::io::Result<GrpcConn>> + Send {
    futures_util::stream::unfold(listener, |mut l| async move {
        let (io, peer) = axum::serve::Listener::accept(&mut l).await;
        Some((Ok(GrpcConn { io, peer }), l))
    })
}

/// Serves the gRPC API on `listeners` until `shutdown` is cancelled.
pub async fn serve(
    listeners: Vec<ApiListener>,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let config = state.control.config().clone();
    // A CreateWorker or LoadCode carries a whole package.
    let max_message = usize::try_from(config.max_code_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let service = WorkManagerServer::new(WorkManagerService::new(Ops::new(state.clone())))
        .max_decoding_message_size(max_message);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_not_serving::<WorkManagerServer<WorkManagerService>>()
        .await;
    let mut ready = state.control.ready_watch();
    let health_stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = health_stop.cancelled() => {}
            r = async { ready.wait_for(|r| *r).await.map(|_| ()) } => if r.is_ok() {
                reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
                reporter.set_serving::<WorkManagerServer<WorkManagerService>>().await;
            }
        }
    });

    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = match reflection_builder().build_v1() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection unavailable (the embedded descriptor set did not load)");
            return Ok(());
        }
    };
    let reflection_v1alpha = match reflection_builder().build_v1alpha() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection (v1alpha) unavailable");
            return Ok(());
        }
    };
    let read_scope = move |req: Request<()>| -> Result<Request<()>, Status> {
        let peer = req.extensions().get::<Peer>().cloned();
        let headers = req.metadata().clone().into_headers();
        crate::api::authorize_call(
            &state,
            peer.as_ref(),
            &headers,
            Need::Read,
            "gRPC server reflection",
        )
        .map(|_| req)
        .map_err(|e| super::status::to_status(&e))
    };

    let streams = listeners
        .into_iter()
        .map(|l| incoming(l).boxed())
        .collect::<Vec<_>>();
    let all = futures_util::stream::select_all(streams);
    tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        // WORKMANAGER_MAX_CONCURRENT_REQUESTS bounds gRPC calls as it bounds REST requests
        // (a separate budget of the same size); more wait.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.security.max_concurrent_requests,
        ))
        .add_service(health)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1,
            read_scope.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            read_scope,
        ))
        .add_service(service)
        .serve_with_incoming_shutdown(all, shutdown.cancelled_owned())
        .await
}

/// Binds every `--grpc-listen` address (TCP ones with TLS when it is configured, offering
/// `h2`), logs them and writes the first to `<data-dir>/grpc.addr` (tests wait for it with
/// `--grpc-listen 127.0.0.1:0`).
pub async fn bind_all(
    config: &crate::config::Config,
    tls: Option<std::sync::Arc<crate::listen::TlsState>>,
    shutdown: CancellationToken,
) -> Result<Vec<ApiListener>, crate::daemon::DaemonError> {
    use crate::config::ListenAddr;
    let mut out = Vec::new();
    for addr in &config.grpc_listen {
        let tls_here = match addr {
            ListenAddr::Tcp(_) => tls.clone(),
            ListenAddr::Unix(_) => None,
        };
        let l = crate::listen::bind_with_alpn(
            addr,
            tls_here,
            config.security.unix_socket_group,
            shutdown.clone(),
            crate::listen::Alpn::H2,
        )
        .await
        .map_err(|source| crate::daemon::DaemonError::Bind {
            addr: format!("{addr} (WORKMANAGER_GRPC_LISTEN)"),
            source,
        })?;
        tracing::info!(address = %l.display, tls = matches!(addr, ListenAddr::Tcp(_)) && tls.is_some(), "gRPC listening");
        out.push(l);
    }
    let path = config.data_dir.join("grpc.addr");
    match out.first() {
        Some(l) => {
            let tmp = config.data_dir.join(".grpc.addr.tmp");
            let r = std::fs::write(&tmp, format!("{}\n", l.display))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = r {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the gRPC address file");
            }
        }
        None => {
            let _ = std::fs::remove_file(&path);
            tracing::info!("gRPC API off (WORKMANAGER_GRPC_LISTEN=off)");
        }
    }
    Ok(out)
}
