//! Each `WorkManager` RPC as a plain function: proto request in, proto response out, over
//! [`crate::control`] (the functions REST calls), with REST's validation
//! ([`crate::api::workers::create_command_with_code`], [`crate::api::workers::code_input`]).
//! Shared by the tonic service and `POST /v1/gateway/invoke-json`.

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::workers::{CodeSourceBody, CreateWorkerBody};
use crate::control::CodeInput;
use crate::registry::{CodeRef, CodeSourceKind, HistoryEntry as Version, Status, WorkerRecord};
use crate::runtime::EngineKind;

use super::pb;

/// The operations, bound to one daemon's state.
#[derive(Clone, Debug)]
pub struct Ops {
    state: AppState,
}

/// The proto status of a registry status.
pub fn status_of(s: Status) -> pb::WorkerStatus {
    match s {
        Status::Stopped => pb::WorkerStatus::Stopped,
        Status::Running => pb::WorkerStatus::Running,
        Status::Error => pb::WorkerStatus::Error,
    }
}

/// What a worker's code looks like on the wire: the URL for URL sources, never the bytes; the
/// package's sha256 always.
fn code_source_of(c: &CodeRef) -> pb::CodeSource {
    pb::CodeSource {
        source: match (c.source, &c.url) {
            (CodeSourceKind::Url, Some(url)) => Some(pb::code_source::Source::Url(url.clone())),
            _ => None,
        },
        sha256: c.sha256.clone(),
        signature: String::new(),
    }
}

/// Turns a proto code source into code input, with the REST rules (one of url and content;
/// `sha256` only with a URL; content not empty).
fn code_input(src: Option<pb::CodeSource>, max_bytes: u64) -> Result<CodeInput, ApiError> {
    let src = src.ok_or_else(|| {
        ApiError::InvalidArgument("code_source is required: set its url or its content".into())
    })?;
    let signature = Some(src.signature).filter(|s| !s.is_empty());
    let sha256 = Some(src.sha256).filter(|s| !s.is_empty());
    match src.source {
        None => Err(ApiError::InvalidArgument(
            "code_source is empty: set its url or its content".into(),
        )),
        Some(pb::code_source::Source::Url(url)) => crate::api::workers::code_input(
            CodeSourceBody {
                content: None,
                url: Some(url),
                sha256,
                signature,
            },
            max_bytes,
        ),
        Some(pb::code_source::Source::Content(bytes)) => {
            if sha256.is_some() {
                return Err(ApiError::InvalidArgument(
                    "code_source.sha256 applies to url sources only".into(),
                ));
            }
            if bytes.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "code_source.content is empty".into(),
                ));
            }
            Ok(CodeInput::Content { bytes, signature })
        }
    }
}

impl Ops {
    /// Binds the operations to a daemon's state.
    pub fn new(state: AppState) -> Ops {
        Ops { state }
    }

    /// The daemon's state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    fn max_bytes(&self) -> u64 {
        self.state.control.config().max_code_bytes
    }

    /// A worker as `WorkerInfo`, with the runtime's live figures.
    pub fn worker_info(&self, w: &WorkerRecord) -> pb::WorkerInfo {
        let live = self.state.control.runtime().worker_info(&w.id);
        pb::WorkerInfo {
            id: w.id.clone(),
            code_source: Some(code_source_of(&w.code)),
            mime_type: w.mime_type.clone(),
            language: EngineKind::from_mime(&w.mime_type)
                .map(|e| crate::runtime::language(e).to_owned())
                .unwrap_or_default(),
            topic: w.topic.clone(),
            group: w.group.clone().unwrap_or_default(),
            created_at: w.created_at.clone(),
            status: status_of(w.status) as i32,
            config: w.config.iter().cloned().collect(),
            tags: w.tags.clone(),
            updated_at: w.updated_at.clone(),
            last_error: w
                .last_error
                .as_ref()
                .map(|e| format!("{}: {}", e.error_type, e.message))
                .unwrap_or_default(),
            host_pid: live.and_then(|l| l.host_pid).unwrap_or(0),
            isolation: w.isolation.as_str().to_owned(),
            message_timeout_seconds: w.message_timeout_seconds,
            max_concurrency: w.max_concurrency,
            limits: Some(w.limits).filter(|l| !l.is_empty()).map(limits_to_pb),
            replicas: w.replicas.unwrap_or(0),
            instances: self.state.control.placement_of(w).instances,
        }
    }

    /// `CreateWorker`: validated exactly like `POST /v1/workers`.
    pub async fn create_worker(
        &self,
        r: pb::CreateWorkerRequest,
    ) -> Result<pb::CreateWorkerResponse, ApiError> {
        let code = code_input(r.code_source, self.max_bytes());
        let body = CreateWorkerBody {
            mime_type: r.mime_type,
            topic: r.topic,
            group: Some(r.group).filter(|g| !g.is_empty()),
            code_source: CodeSourceBody::default(),
            config: r.config,
            tags: r.tags,
            isolation: Some(r.isolation).filter(|i| !i.is_empty()),
            message_timeout_seconds: Some(r.message_timeout_seconds).filter(|&t| t != 0),
            max_concurrency: Some(r.max_concurrency).filter(|&c| c != 0),
            limits: r.limits.map(limits_from_pb),
            replicas: Some(r.replicas).filter(|&n| n != 0),
        };
        let cmd = crate::api::workers::create_command_with_code(body, code)?;
        let w = self.state.control.create(cmd).await?;
        Ok(pb::CreateWorkerResponse { id: w.id })
    }

    /// `StartWorker`.
    pub async fn start_worker(
        &self,
        r: pb::StartWorkerRequest,
    ) -> Result<pb::StartWorkerResponse, ApiError> {
        self.state.control.start(&need_id(&r.id)?).await?;
        Ok(pb::StartWorkerResponse {})
    }

    /// `StopWorker`.
    pub async fn stop_worker(
        &self,
        r: pb::StopWorkerRequest,
    ) -> Result<pb::StopWorkerResponse, ApiError> {
        self.state.control.stop(&need_id(&r.id)?).await?;
        Ok(pb::StopWorkerResponse {})
    }

    /// `LoadCode` (hot reload).
    pub async fn load_code(
        &self,
        r: pb::LoadCodeRequest,
    ) -> Result<pb::LoadCodeResponse, ApiError> {
        let id = need_id(&r.id)?;
        let input = code_input(r.code_source, self.max_bytes())?;
        let limits = r.limits.map(limits_from_pb);
        self.state.control.reload(&id, input, limits).await?;
        Ok(pb::LoadCodeResponse {})
    }

    /// `DeleteWorker`.
    pub async fn delete_worker(
        &self,
        r: pb::DeleteWorkerRequest,
    ) -> Result<pb::DeleteWorkerResponse, ApiError> {
        self.state.control.delete(&need_id(&r.id)?).await?;
        Ok(pb::DeleteWorkerResponse {})
    }

    /// `ListWorkers`, oldest first.
    pub async fn list_workers(
        &self,
        _r: pb::ListWorkersRequest,
    ) -> Result<pb::ListWorkersResponse, ApiError> {
        let all = self.state.control.list().await?;
        Ok(pb::ListWorkersResponse {
            workers: all.iter().map(|w| self.worker_info(w)).collect(),
        })
    }

    /// `GetWorkerHistory`, oldest first.
    pub async fn get_worker_history(
        &self,
        r: pb::GetWorkerHistoryRequest,
    ) -> Result<pb::GetWorkerHistoryResponse, ApiError> {
        let h = self.state.control.history(&need_id(&r.id)?).await?;
        Ok(pb::GetWorkerHistoryResponse {
            entries: h
                .iter()
                .map(|v: &Version| pb::HistoryEntry {
                    code_source: Some(code_source_of(&v.code)),
                    created_at: v.created_at.clone(),
                    version: v.version,
                })
                .collect(),
        })
    }

    /// `RecoverWorkers`.
    pub async fn recover_workers(
        &self,
        _r: pb::RecoverWorkersRequest,
    ) -> Result<pb::RecoverWorkersResponse, ApiError> {
        let n = self.state.control.recover().await?;
        Ok(pb::RecoverWorkersResponse {
            recovered_count: i32::try_from(n).unwrap_or(i32::MAX),
        })
    }

    /// `SetTag`.
    pub async fn set_tag(&self, r: pb::SetTagRequest) -> Result<pb::SetTagResponse, ApiError> {
        self.state
            .control
            .set_tag(&need_id(&r.id)?, &r.key, &r.value)
            .await?;
        Ok(pb::SetTagResponse {})
    }

    /// `SetTags`: replaces the map; empty clears.
    pub async fn set_tags(&self, r: pb::SetTagsRequest) -> Result<pb::SetTagsResponse, ApiError> {
        self.state
            .control
            .set_tags(&need_id(&r.id)?, r.tags)
            .await?;
        Ok(pb::SetTagsResponse {})
    }

    /// `GetTag`: an unknown worker is `NOT_FOUND`; an unset key is an absent value.
    pub async fn get_tag(&self, r: pb::GetTagRequest) -> Result<pb::GetTagResponse, ApiError> {
        let w = self.state.control.get(&need_id(&r.id)?).await?;
        Ok(pb::GetTagResponse {
            value: w.tags.get(&r.key).cloned(),
        })
    }

    /// `GetTags`.
    pub async fn get_tags(&self, r: pb::GetTagsRequest) -> Result<pb::GetTagsResponse, ApiError> {
        let w = self.state.control.get(&need_id(&r.id)?).await?;
        Ok(pb::GetTagsResponse { tags: w.tags })
    }
}

/// An empty id is an invalid argument, not an unknown worker.
fn need_id(id: &str) -> Result<String, ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::InvalidArgument(
            "id is required: the worker's id as CreateWorker returned it".into(),
        ));
    }
    Ok(id.to_owned())
}

fn limits_to_pb(l: crate::worker_limits::WorkerLimits) -> pb::WorkerLimits {
    pb::WorkerLimits {
        memory_bytes: l.memory_bytes,
    }
}

fn limits_from_pb(l: pb::WorkerLimits) -> crate::worker_limits::WorkerLimits {
    crate::worker_limits::WorkerLimits {
        memory_bytes: l.memory_bytes,
    }
}
