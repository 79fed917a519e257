//! `/v1/workers/*`: request and response shapes and thin handlers over [`crate::control`].
//!
//! Out: camelCase. In: camelCase or snake_case (serde aliases), unknown fields refused so a
//! typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use wm_shared::CloudEvent;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, body_rejection, is_json, parse_json};
use crate::control::{CodeInput, CreateWorker};
use crate::registry::{CodeRef, HistoryEntry, LastError, WorkerRecord};
use crate::runtime::EngineKind;
use crate::runtime::{Isolation, WorkerRuntimeInfo};
use crate::worker_limits::WorkerLimits;

/// `codeSource`: exactly one of `content` (base64) and `url` (with an optional `sha256`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSourceBody {
    /// The package, base64.
    pub content: Option<String>,
    /// Where to download the package.
    pub url: Option<String>,
    /// Expected sha256 of the download (hex).
    #[serde(alias = "contentSha256", alias = "content_sha256")]
    pub sha256: Option<String>,
    /// The package's minisign signature: the `.minisig` text, or it in base64. Needed when
    /// `PACKAGE_TRUSTED_KEYS` is set (for a `url`, `<url>.minisig` is tried otherwise).
    pub signature: Option<String>,
}

/// `POST /v1/workers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkerBody {
    /// Selects the engine.
    #[serde(alias = "mime_type")]
    pub mime_type: String,
    /// Input topic.
    pub topic: String,
    /// Coordination group.
    #[serde(default)]
    pub group: Option<String>,
    /// The code.
    #[serde(alias = "code_source")]
    pub code_source: CodeSourceBody,
    /// Extensions stamped onto events.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `shared` (default) or `dedicated`.
    #[serde(default)]
    pub isolation: Option<String>,
    /// Deadline of one call, seconds.
    #[serde(default, alias = "message_timeout_seconds")]
    pub message_timeout_seconds: Option<u32>,
    /// Calls at once.
    #[serde(default, alias = "max_concurrency")]
    pub max_concurrency: Option<u32>,
    /// The worker's own resource limits, overriding the engine's settings; a worker with
    /// limits gets a host of its own (`crate::worker_limits`).
    #[serde(default)]
    pub limits: Option<WorkerLimits>,
    /// Cluster mode: on how many daemons it runs (default: every daemon).
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// Most daemons a worker can be limited to (`replicas`).
pub const MAX_REPLICAS: u32 = 1024;

/// `POST /v1/workers/{id}/code`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadCodeBody {
    /// The code.
    #[serde(alias = "code_source")]
    pub code_source: CodeSourceBody,
    /// New limits for the worker (absent: unchanged; `{}`: the engine's settings again).
    #[serde(default)]
    pub limits: Option<WorkerLimits>,
}

/// `POST /v1/workers/{id}/code-from-url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeFromUrlBody {
    /// Where to download the package.
    pub url: String,
    /// Expected sha256 (hex).
    #[serde(default, alias = "contentSha256", alias = "content_sha256")]
    pub sha256: Option<String>,
    /// The package's minisign signature (see [`CodeSourceBody::signature`]).
    #[serde(default)]
    pub signature: Option<String>,
    /// New limits for the worker (see [`LoadCodeBody::limits`]).
    #[serde(default)]
    pub limits: Option<WorkerLimits>,
}

/// `PUT /v1/workers/{id}/tags/{key}`: `{"value": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagValueBody {
    /// The value.
    pub value: String,
}

/// `PUT /v1/workers/{id}/tags`: `{"tags": {...}}` or the bare map.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TagsBody {
    /// `{"tags": {...}}`.
    Wrapped {
        /// The tags.
        tags: BTreeMap<String, String>,
    },
    /// `{...}`.
    Bare(BTreeMap<String, String>),
}

/// `code` in a worker.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeView {
    /// Hex sha256 of the package.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// `content` or `url`.
    pub source: crate::registry::CodeSourceKind,
    /// For URL sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl From<&CodeRef> for CodeView {
    fn from(c: &CodeRef) -> Self {
        CodeView {
            sha256: c.sha256.clone(),
            size: c.size,
            source: c.source,
            url: c.url.clone(),
        }
    }
}

/// Live counters of a worker.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountersView {
    /// Messages processed.
    pub processed: u64,
    /// Failed calls.
    pub failed: u64,
    /// Dead-lettered messages.
    pub dead_lettered: u64,
    /// Calls running now.
    pub in_flight: u64,
}

/// A worker as the API shows it (never the code bytes).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    /// UUID.
    pub id: String,
    /// MIME type.
    pub mime_type: String,
    /// The engine's language name.
    pub language: String,
    /// Input topic.
    pub topic: String,
    /// Coordination group.
    pub group: Option<String>,
    /// Extensions stamped onto events.
    pub config: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Shared or dedicated.
    pub isolation: Isolation,
    /// The worker's own limits (`null`: the engine's settings).
    pub limits: Option<WorkerLimits>,
    /// Deadline of one call, seconds.
    pub message_timeout_seconds: u32,
    /// Calls at once.
    pub max_concurrency: u32,
    /// `STOPPED`, `RUNNING` or `ERROR`.
    pub status: crate::registry::Status,
    /// Why it is in `ERROR`.
    pub last_error: Option<LastError>,
    /// The current code.
    pub code: CodeView,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The host process carrying it, when loaded (on this daemon).
    pub host_pid: Option<i32>,
    /// Where it runs: `replicas` asked for and the daemons it is placed on.
    pub placement: crate::cluster::PlacementView,
    /// Live counters.
    pub counters: CountersView,
}

impl WorkerView {
    /// Combines the registry record with the runtime's live figures.
    pub fn new(w: &WorkerRecord, live: Option<WorkerRuntimeInfo>) -> WorkerView {
        let live = live.unwrap_or_default();
        WorkerView {
            id: w.id.clone(),
            mime_type: w.mime_type.clone(),
            language: EngineKind::from_mime(&w.mime_type)
                .map(|e| crate::runtime::language(e).to_owned())
                .unwrap_or_default(),
            topic: w.topic.clone(),
            group: w.group.clone(),
            config: w.config.iter().cloned().collect(),
            tags: w.tags.clone(),
            isolation: w.isolation,
            limits: Some(w.limits).filter(|l| !l.is_empty()),
            message_timeout_seconds: w.message_timeout_seconds,
            max_concurrency: w.max_concurrency,
            status: w.status,
            last_error: w.last_error.clone(),
            code: CodeView::from(&w.code),
            created_at: w.created_at.clone(),
            updated_at: w.updated_at.clone(),
            host_pid: live.host_pid,
            placement: crate::cluster::PlacementView {
                replicas: w.replicas,
                instances: Vec::new(),
            },
            counters: CountersView {
                processed: live.processed,
                failed: live.failed,
                dead_lettered: live.dead_lettered,
                in_flight: live.in_flight,
            },
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    /// 1, 2, ...
    pub version: u32,
    /// The code.
    pub code: CodeView,
    /// When it was loaded.
    pub created_at: String,
}

impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> Self {
        HistoryView {
            version: h.version,
            code: CodeView::from(&h.code),
            created_at: h.created_at.clone(),
        }
    }
}

fn view(state: &AppState, w: &WorkerRecord) -> WorkerView {
    let mut v = WorkerView::new(w, state.control.runtime().worker_info(&w.id));
    v.placement = state.control.placement_of(w);
    v
}

/// Topic and group names: 1-249 of `[A-Za-z0-9._:-]` (they appear in URL paths).
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=249).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "{what} '{name}' is invalid: use 1-249 characters of A-Z a-z 0-9 . _ - :"
        )))
    }
}

fn check_sha256(s: &str) -> Result<String, ApiError> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(ApiError::InvalidArgument(format!(
            "sha256 '{s}' is not 64 hex digits"
        )))
    }
}

/// Turns a `codeSource` into code input, checking the one-of rule and sizes.
pub fn code_input(src: CodeSourceBody, max_bytes: u64) -> Result<CodeInput, ApiError> {
    match (src.content, src.url) {
        (Some(_), Some(_)) => Err(ApiError::InvalidArgument(
            "codeSource has both 'content' and 'url'; give one".to_owned(),
        )),
        (None, None) => Err(ApiError::InvalidArgument(
            "codeSource needs 'content' (base64) or 'url'".to_owned(),
        )),
        (Some(content), None) => {
            if src.sha256.is_some() {
                return Err(ApiError::InvalidArgument(
                    "codeSource 'sha256' applies to 'url' sources only".to_owned(),
                ));
            }
            // Refuse before decoding: base64 is 4/3 of the bytes.
            if (content.len() as u64) / 4 * 3 > max_bytes + 3 {
                return Err(ApiError::TooLarge(format!(
                    "the package is larger than the limit of {max_bytes} bytes (PACKAGE_MAX_BYTES)"
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| {
                    ApiError::InvalidArgument(format!(
                        "codeSource.content is not valid base64: {e}"
                    ))
                })?;
            if bytes.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "codeSource.content is empty".to_owned(),
                ));
            }
            Ok(CodeInput::Content {
                bytes,
                signature: src.signature,
            })
        }
        (None, Some(url)) => Ok(CodeInput::Url {
            url,
            sha256: src.sha256.as_deref().map(check_sha256).transpose()?,
            signature: src.signature,
        }),
    }
}

/// Validates a create body into a command.
pub fn create_command(body: CreateWorkerBody, state: &AppState) -> Result<CreateWorker, ApiError> {
    let code = code_input(
        body.code_source.clone(),
        state.control.config().max_code_bytes,
    );
    create_command_with_code(body, code)
}

/// [`create_command`] with the code already turned into [`CodeInput`] (or the error doing so
/// gave), for callers whose code source is not JSON (the gRPC API). `body.code_source` is
/// ignored. The code's error is reported after the other fields' errors.
pub fn create_command_with_code(
    body: CreateWorkerBody,
    code: Result<CodeInput, ApiError>,
) -> Result<CreateWorker, ApiError> {
    let mime = body.mime_type.trim().to_owned();
    if mime.is_empty() {
        return Err(ApiError::InvalidArgument("mimeType is required".to_owned()));
    }
    let engine =
        EngineKind::from_mime(&mime).ok_or_else(|| ApiError::EngineNotFound(mime.clone()))?;
    check_name("topic", &body.topic)?;
    let group = match body.group {
        Some(g) if g.is_empty() => None,
        Some(g) => {
            check_name("group", &g)?;
            Some(g)
        }
        None => None,
    };
    if body.config.len() > 64 {
        return Err(ApiError::InvalidArgument(format!(
            "{} config entries given; at most 64 are allowed",
            body.config.len()
        )));
    }
    for (k, v) in &body.config {
        if !wm_shared::cloudevent::is_valid_extension_name(k)
            || matches!(
                k.as_str(),
                "id" | "type"
                    | "source"
                    | "specversion"
                    | "datacontenttype"
                    | "dataschema"
                    | "subject"
                    | "time"
                    | "data"
            )
        {
            return Err(ApiError::InvalidArgument(format!(
                "config key '{k}' is not a valid CloudEvents extension name (1-20 lower-case letters or digits, not a reserved attribute); config entries become event extensions"
            )));
        }
        if v.len() > 4096 {
            return Err(ApiError::InvalidArgument(format!(
                "config '{k}' has a value of {} bytes; the limit is 4096",
                v.len()
            )));
        }
    }
    crate::control::check_tags(&body.tags)?;
    let isolation = match body.isolation.as_deref() {
        // A Python host serves one worker unless asked (one interpreter, one GIL: workers
        // sharing it would take turns).
        None if matches!(
            engine,
            wm_shared::package::EngineKind::Python | wm_shared::package::EngineKind::PythonWheel
        ) =>
        {
            Isolation::Dedicated
        }
        None => Isolation::Shared,
        Some(s) => Isolation::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "isolation '{s}' is invalid: use shared or dedicated"
            ))
        })?,
    };
    let limits = body.limits.unwrap_or_default();
    crate::worker_limits::check(&limits, engine).map_err(ApiError::InvalidArgument)?;
    let isolation = match (isolation, body.isolation.is_some()) {
        (Isolation::Shared, true) if !limits.is_empty() => {
            return Err(ApiError::InvalidArgument(
                "isolation 'shared' cannot go with limits: a limit is a property of a host process, so a worker with limits gets a host of its own; leave isolation out or use dedicated".to_owned(),
            ));
        }
        _ if !limits.is_empty() => Isolation::Dedicated,
        (i, _) => i,
    };
    if let Some(t) = body.message_timeout_seconds
        && !(1..=3600).contains(&t)
    {
        return Err(ApiError::InvalidArgument(format!(
            "messageTimeoutSeconds {t} is out of range 1-3600"
        )));
    }
    let max_concurrency = body.max_concurrency.unwrap_or(1);
    if !(1..=1024).contains(&max_concurrency) {
        return Err(ApiError::InvalidArgument(format!(
            "maxConcurrency {max_concurrency} is out of range 1-1024"
        )));
    }
    if let Some(r) = body.replicas
        && !(1..=MAX_REPLICAS).contains(&r)
    {
        return Err(ApiError::InvalidArgument(format!(
            "replicas {r} is out of range 1-{MAX_REPLICAS}; leave it out to run the worker on every daemon"
        )));
    }
    Ok(CreateWorker {
        replicas: body.replicas,
        engine,
        mime_type: mime,
        topic: body.topic,
        group,
        code: code?,
        config: body.config.into_iter().collect(),
        tags: body.tags,
        isolation,
        message_timeout_seconds: body.message_timeout_seconds,
        max_concurrency,
        limits,
    })
}

/// `POST /v1/workers`.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateWorkerBody>,
) -> Result<Response, ApiError> {
    let cmd = create_command(body, &state)?;
    let created = state.control.create_detailed(cmd).await?;
    let (w, warnings) = (created.worker, created.warnings);
    let location = format!("/v1/workers/{}", w.id);
    let Json(mut body) = with_dependencies(view(&state, &w), created.dependencies)?;
    // Accepted deviations of the package (e.g. the seed's layout), for the author to fix.
    if !warnings.is_empty() {
        body["warnings"] = serde_json::json!(warnings);
    }
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// `GET /v1/workers`.
pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let workers = state.control.list().await?;
    let views: Vec<WorkerView> = workers.iter().map(|w| view(&state, w)).collect();
    Ok(Json(serde_json::json!({ "workers": views })))
}

/// `GET /v1/workers/{id}`.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let w = state.control.get(&id).await?;
    Ok(Json(view(&state, &w)))
}

/// `POST /v1/workers/{id}/start`.
pub async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let w = state.control.start(&id).await?;
    Ok(Json(view(&state, &w)))
}

/// `POST /v1/workers/{id}/stop`.
pub async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let w = state.control.stop(&id).await?;
    Ok(Json(view(&state, &w)))
}

/// `DELETE /v1/workers/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.control.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/workers/{id}/code`.
pub async fn load_code(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<LoadCodeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let input = code_input(body.code_source, state.control.config().max_code_bytes)?;
    let (w, deps) = state.control.reload(&id, input, body.limits).await?;
    with_dependencies(view(&state, &w), deps)
}

/// The worker as JSON, plus `dependencies` (what a wheel's dependency install did) when
/// there was one.
fn with_dependencies(
    view: WorkerView,
    deps: Option<crate::python_deps::Report>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let encode =
        |e: serde_json::Error| ApiError::Internal(format!("cannot encode the worker: {e}"));
    let mut body = serde_json::to_value(view).map_err(encode)?;
    if let Some(d) = deps {
        body["dependencies"] = serde_json::to_value(d).map_err(encode)?;
    }
    Ok(Json(body))
}

/// `PUT /v1/workers/{id}/code`: the raw package as the body.
pub async fn put_code(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    if is_json(req.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "PUT .../code takes the raw package (Content-Type: application/octet-stream); use POST .../code for JSON".to_owned(),
        ));
    }
    // The signature of a raw upload: the `.minisig` text in base64.
    let signature = req
        .headers()
        .get("x-package-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = Bytes::from_request(req, &state)
        .await
        .map_err(body_rejection)?;
    let max = state.control.config().max_code_bytes;
    if bytes.len() as u64 > max {
        return Err(ApiError::TooLarge(format!(
            "the package has {} bytes; the limit is {max} (PACKAGE_MAX_BYTES)",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the request body is empty".to_owned(),
        ));
    }
    let (w, deps) = state
        .control
        .load_code_detailed(
            &id,
            CodeInput::Content {
                bytes: bytes.to_vec(),
                signature,
            },
        )
        .await?;
    with_dependencies(view(&state, &w), deps)
}

/// `POST /v1/workers/{id}/code-from-url`.
pub async fn code_from_url(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CodeFromUrlBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let input = CodeInput::Url {
        url: body.url,
        sha256: body.sha256.as_deref().map(check_sha256).transpose()?,
        signature: body.signature,
    };
    let (w, deps) = state.control.reload(&id, input, body.limits).await?;
    with_dependencies(view(&state, &w), deps)
}

/// `GET /v1/workers/{id}/history`.
pub async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = state.control.history(&id).await?;
    let entries: Vec<HistoryView> = h.iter().map(HistoryView::from).collect();
    Ok(Json(serde_json::json!({ "entries": entries })))
}

/// `GET /v1/workers/{id}/tags`.
pub async fn get_tags(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let w = state.control.get(&id).await?;
    Ok(Json(serde_json::json!({ "tags": w.tags })))
}

/// `PUT /v1/workers/{id}/tags`: replaces the whole map (empty clears).
pub async fn put_tags(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TagsBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tags = match body {
        TagsBody::Wrapped { tags } | TagsBody::Bare(tags) => tags,
    };
    let tags = state.control.set_tags(&id, tags).await?;
    Ok(Json(serde_json::json!({ "tags": tags })))
}

/// `GET /v1/workers/{id}/tags/{key}`.
pub async fn get_tag(
    State(state): State<AppState>,
    ApiPath((id, key)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let w = state.control.get(&id).await?;
    match w.tags.get(&key) {
        Some(v) => Ok(Json(serde_json::json!({ "key": key, "value": v }))),
        None => Err(ApiError::NotFound(format!(
            "worker '{id}' has no tag '{key}'"
        ))),
    }
}

/// `PUT /v1/workers/{id}/tags/{key}` with `{"value": "..."}`.
pub async fn put_tag(
    State(state): State<AppState>,
    ApiPath((id, key)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<TagValueBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.control.set_tag(&id, &key, &body.value).await?;
    Ok(Json(serde_json::json!({ "key": key, "value": body.value })))
}

/// `DELETE /v1/workers/{id}/tags/{key}`.
pub async fn delete_tag(
    State(state): State<AppState>,
    ApiPath((id, key)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_tag(&id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/workers/{id}/invoke`: a structured-mode CloudEvent in, the reply out (200), or
/// 204 when the worker gives no reply.
pub async fn invoke(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "invoke takes a CloudEvent in structured mode: Content-Type: application/cloudevents+json or application/json".to_owned(),
        ));
    }
    let bytes = Bytes::from_request(req, &state)
        .await
        .map_err(body_rejection)?;
    let value: serde_json::Value = parse_json(&bytes)?;
    let event = CloudEvent::from_json(value)
        .map_err(|e| ApiError::InvalidArgument(format!("invalid CloudEvent: {e}")))?;
    match state.control.invoke(&id, event).await? {
        Some(reply) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/cloudevents+json")],
            reply.to_json_value().to_string(),
        )
            .into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `POST /v1/workers/recover`.
pub async fn recover(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let n = state.control.recover().await?;
    Ok(Json(serde_json::json!({ "recoveredCount": n })))
}
