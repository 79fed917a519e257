//! The tonic `WorkManager` service: for each RPC, authorize (same tokens and scopes as REST),
//! run the shared operation ([`super::ops`]), audit changes, map errors ([`super::status`]).

use std::future::Future;

use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::methods::Method;
use super::ops::Ops;
use super::pb;
use super::pb::work_manager_server::WorkManager;
use crate::api::error::ApiError;
use crate::audit::AuditRecord;
use crate::listen::Peer;

/// The service, bound to one daemon.
#[derive(Clone, Debug)]
pub struct WorkManagerService {
    ops: Ops,
}

impl WorkManagerService {
    /// Binds the service to the operations.
    pub fn new(ops: Ops) -> WorkManagerService {
        WorkManagerService { ops }
    }

    /// Authorizes, runs `op`, audits a change, maps the error. `id_of` names the worker a
    /// successful call was about, when the request did not (CreateWorker).
    async fn call<Req, Resp, F, Fut>(
        &self,
        method: Method,
        req: Request<Req>,
        request_id: Option<String>,
        id_of: fn(&Resp) -> Option<String>,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Ops, Req) -> Fut,
        Fut: Future<Output = Result<Resp, ApiError>>,
    {
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %format!("{}/{}", super::SERVICE_NAME, method.name()),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = super::SERVICE_NAME,
            rpc.method = method.name(),
            rpc.grpc.status_code = tracing::field::Empty,
            worker.id = tracing::field::Empty,
        );
        let headers = req.metadata().clone().into_headers();
        crate::telemetry::continue_from_headers(&span, &headers);
        async move {
            let peer = req.extensions().get::<Peer>().cloned();
            let what = format!("{}/{}", super::SERVICE_NAME, method.name());
            let state = self.ops.state().clone();
            let principal = match crate::api::authorize_call(
                &state,
                peer.as_ref(),
                &headers,
                method.need(),
                &what,
            ) {
                Ok(p) => p,
                Err(e) => {
                    state.control.metrics().rejection(e.code());
                    return Err(self.fail(&e));
                }
            };
            let result = op(self.ops.clone(), req.into_inner()).await;
            let worker_id = request_id
                .filter(|i| !i.is_empty())
                .or_else(|| result.as_ref().ok().and_then(id_of));
            if let Some(id) = &worker_id {
                tracing::Span::current().record("worker.id", id.as_str());
            }
            if let Some(action) = method.audit_action() {
                state.security.audit.record(&AuditRecord {
                    who: principal.who,
                    action,
                    request: format!("gRPC {what}"),
                    worker_id: worker_id.clone(),
                    package_sha256: None,
                    status: match &result {
                        Ok(_) => 200,
                        Err(e) => e.status().as_u16(),
                    },
                    remote: match &peer {
                        Some(Peer { addr: Some(a), .. }) => a.to_string(),
                        Some(_) => "unix".into(),
                        None => "in-process".into(),
                    },
                });
            }
            match result {
                Ok(resp) => {
                    tracing::Span::current().record("rpc.grpc.status_code", 0);
                    Ok(Response::new(resp))
                }
                Err(e) => Err(self.fail(&e)),
            }
        }
        .instrument(span.clone())
        .await
    }

    fn fail(&self, e: &ApiError) -> Status {
        let status = super::status::to_status(e);
        let span = tracing::Span::current();
        span.record("rpc.grpc.status_code", status.code() as i32);
        if status.code() != tonic::Code::Internal {
            tracing::info!(code = e.code(), "gRPC call failed: {e}");
        }
        status
    }
}

fn no_id<T>(_: &T) -> Option<String> {
    None
}

#[tonic::async_trait]
impl WorkManager for WorkManagerService {
    async fn create_worker(
        &self,
        req: Request<pb::CreateWorkerRequest>,
    ) -> Result<Response<pb::CreateWorkerResponse>, Status> {
        self.call(
            Method::CreateWorker,
            req,
            None,
            |r: &pb::CreateWorkerResponse| Some(r.id.clone()),
            |ops, r| async move { ops.create_worker(r).await },
        )
        .await
    }

    async fn start_worker(
        &self,
        req: Request<pb::StartWorkerRequest>,
    ) -> Result<Response<pb::StartWorkerResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::StartWorker, req, id, no_id, |ops, r| async move {
            ops.start_worker(r).await
        })
        .await
    }

    async fn stop_worker(
        &self,
        req: Request<pb::StopWorkerRequest>,
    ) -> Result<Response<pb::StopWorkerResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::StopWorker, req, id, no_id, |ops, r| async move {
            ops.stop_worker(r).await
        })
        .await
    }

    async fn load_code(
        &self,
        req: Request<pb::LoadCodeRequest>,
    ) -> Result<Response<pb::LoadCodeResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::LoadCode, req, id, no_id, |ops, r| async move {
            ops.load_code(r).await
        })
        .await
    }

    async fn delete_worker(
        &self,
        req: Request<pb::DeleteWorkerRequest>,
    ) -> Result<Response<pb::DeleteWorkerResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::DeleteWorker, req, id, no_id, |ops, r| async move {
            ops.delete_worker(r).await
        })
        .await
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.call(Method::ListWorkers, req, None, no_id, |ops, r| async move {
            ops.list_workers(r).await
        })
        .await
    }

    async fn get_worker_history(
        &self,
        req: Request<pb::GetWorkerHistoryRequest>,
    ) -> Result<Response<pb::GetWorkerHistoryResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(
            Method::GetWorkerHistory,
            req,
            id,
            no_id,
            |ops, r| async move { ops.get_worker_history(r).await },
        )
        .await
    }

    async fn recover_workers(
        &self,
        req: Request<pb::RecoverWorkersRequest>,
    ) -> Result<Response<pb::RecoverWorkersResponse>, Status> {
        self.call(
            Method::RecoverWorkers,
            req,
            None,
            no_id,
            |ops, r| async move { ops.recover_workers(r).await },
        )
        .await
    }

    async fn set_tag(
        &self,
        req: Request<pb::SetTagRequest>,
    ) -> Result<Response<pb::SetTagResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::SetTag, req, id, no_id, |ops, r| async move {
            ops.set_tag(r).await
        })
        .await
    }

    async fn set_tags(
        &self,
        req: Request<pb::SetTagsRequest>,
    ) -> Result<Response<pb::SetTagsResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::SetTags, req, id, no_id, |ops, r| async move {
            ops.set_tags(r).await
        })
        .await
    }

    async fn get_tag(
        &self,
        req: Request<pb::GetTagRequest>,
    ) -> Result<Response<pb::GetTagResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::GetTag, req, id, no_id, |ops, r| async move {
            ops.get_tag(r).await
        })
        .await
    }

    async fn get_tags(
        &self,
        req: Request<pb::GetTagsRequest>,
    ) -> Result<Response<pb::GetTagsResponse>, Status> {
        let id = Some(req.get_ref().id.clone());
        self.call(Method::GetTags, req, id, no_id, |ops, r| async move {
            ops.get_tags(r).await
        })
        .await
    }
}
