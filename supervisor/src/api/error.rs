//! The one error type of the REST API and the extractors that keep every rejection in its
//! shape: `{"error": {"code": "...", "message": "..."}}`.
//!
//! Codes (DESIGN.md §7, plus the few this daemon adds):
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_argument` | a malformed or out-of-range field, malformed JSON |
//! | 400 | `engine_not_found` | no engine for the MIME type |
//! | 401 | `unauthorized` | missing or wrong bearer token |
//! | 403 | `forbidden` | the caller lacks the scope the route needs (the message names it) |
//! | 403 | `host_not_allowed` | a `Host` that is not a name of this daemon (DNS rebinding) |
//! | 403 | `origin_not_allowed` | a browser request from an origin not in `WORKMANAGER_ALLOWED_ORIGINS` |
//! | 403 | `url_blocked` | a code URL refused by policy |
//! | 404 | `not_found` | unknown worker or route |
//! | 405 | `method_not_allowed` | known route, wrong method |
//! | 409 | `conflict` | the request clashes with the worker's state (invoke of a stopped worker, tag limit reached) |
//! | 413 | `too_large` | a body or package over the limit |
//! | 415 | `unsupported_media_type` | a JSON endpoint called without a JSON content type |
//! | 422 | `invalid_package` | package validation failed; `details` lists every problem |
//! | 422 | `load_failed` | the host could not load a valid package |
//! | 422 | `compile_failed` | `text/x-csharp` source does not compile; `details` lists every diagnostic with its line and column |
//! | 422 | `invalid_signature` | `PACKAGE_TRUSTED_KEYS` is set and the package signature is missing or wrong |
//! | 429 | `rate_limited` | over the per-token rate or SSE subscription limit; `Retry-After` says when to retry |
//! | 502 | `code_fetch_failed` | a code download failed |
//! | 502 | `invoke_failed` | the worker failed a direct invocation; `errorType` says how |
//! | 503 | `unavailable` | no host pool / shutting down / not ready |
//! | 500 | `internal` | a bug or an I/O failure; details go to the log only |

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::codefetch::FetchError;
use crate::codestore::CodeStoreError;
use crate::registry::RegistryError;
use crate::runtime::{ErrorType, InvokeError, RuntimeError};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed or out-of-range field.
    #[error("{0}")]
    InvalidArgument(String),
    /// No engine for the MIME type.
    #[error(
        "no engine for MIME type '{0}'; use application/x-native-dll, application/x-dotnet-dll or text/x-csharp"
    )]
    EngineNotFound(String),
    /// Missing or wrong bearer token.
    #[error(
        "missing or invalid bearer token: send Authorization: Bearer <token> (workmanager token create makes one)"
    )]
    Unauthorized,
    /// The caller lacks a scope.
    #[error("{0}")]
    Forbidden(String),
    /// A `Host` that is not ours.
    #[error("{0}")]
    HostNotAllowed(String),
    /// A browser request from an origin not allowed.
    #[error("{0}")]
    OriginNotAllowed(String),
    /// Over a rate or subscription limit.
    #[error("{message}")]
    RateLimited {
        /// What was exceeded and what to do.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
    /// The package signature is missing or wrong.
    #[error("{0}")]
    InvalidSignature(String),
    /// A code URL refused by policy.
    #[error("{0}")]
    UrlBlocked(String),
    /// Unknown worker or route.
    #[error("{0}")]
    NotFound(String),
    /// Wrong method for a known route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Clashes with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A JSON endpoint called with another content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Package validation failed.
    #[error("the package is invalid: {}", .0.join("; "))]
    InvalidPackage(Vec<String>),
    /// The host could not load the package.
    #[error("{0}")]
    LoadFailed(String),
    /// Source code the engine's compiler refused: the headline, then every diagnostic (in the
    /// message too, so a client that shows only the message shows them all).
    #[error("{}: {}", .0, .1.join("; "))]
    CompileFailed(String, Vec<String>),
    /// A code download failed.
    #[error("{0}")]
    CodeFetchFailed(String),
    /// The worker failed a direct invocation.
    #[error("the worker failed: {0}")]
    InvokeFailed(InvokeError),
    /// Not able to serve this now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an I/O failure. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::EngineNotFound(_) => "engine_not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::HostNotAllowed(_) => "host_not_allowed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::UrlBlocked(_) => "url_blocked",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::InvalidPackage(_) => "invalid_package",
            ApiError::LoadFailed(_) => "load_failed",
            ApiError::CompileFailed(..) => "compile_failed",
            ApiError::CodeFetchFailed(_) => "code_fetch_failed",
            ApiError::InvokeFailed(_) => "invoke_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidArgument(_) | ApiError::EngineNotFound(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UrlBlocked(_)
            | ApiError::Forbidden(_)
            | ApiError::HostNotAllowed(_)
            | ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InvalidSignature(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidPackage(_) | ApiError::LoadFailed(_) | ApiError::CompileFailed(..) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::CodeFetchFailed(_) | ApiError::InvokeFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A worker id that does not exist.
    pub fn worker_not_found(id: &str) -> ApiError {
        ApiError::NotFound(format!("worker '{id}' not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error()
            && !matches!(
                self,
                ApiError::Unavailable(_) | ApiError::CodeFetchFailed(_) | ApiError::InvokeFailed(_)
            ) {
            // INVARIANT: internal details stay in the log.
            tracing::error!(error = %self, "request failed");
            "something went wrong inside workmanager; the daemon log has the details".to_owned()
        } else {
            if status.is_server_error() {
                tracing::warn!(code = self.code(), error = %self, "request failed");
            }
            self.to_string()
        };
        let mut error = json!({ "code": self.code(), "message": message });
        match &self {
            ApiError::InvalidPackage(problems) => error["details"] = json!(problems),
            ApiError::CompileFailed(_, diagnostics) => error["details"] = json!(diagnostics),
            ApiError::InvokeFailed(e) => error["errorType"] = json!(e.error_type.as_str()),
            _ => {}
        }
        let mut resp = (status, axum::Json(json!({ "error": error }))).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let ApiError::RateLimited { retry_after, .. } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
        }
        resp
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<CodeStoreError> for ApiError {
    fn from(e: CodeStoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::BadUrl { .. } => ApiError::InvalidArgument(e.to_string()),
            FetchError::Blocked { .. } => ApiError::UrlBlocked(e.to_string()),
            FetchError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            FetchError::Failed { .. } | FetchError::Sha256Mismatch { .. } => {
                ApiError::CodeFetchFailed(e.to_string())
            }
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            RuntimeError::LoadFailed { ref message, .. } => {
                match crate::csharp_source::diagnostics(message) {
                    Some((headline, details)) => ApiError::CompileFailed(headline, details),
                    None => ApiError::LoadFailed(e.to_string()),
                }
            }
            RuntimeError::NotLoaded(_) => ApiError::Conflict(e.to_string()),
            RuntimeError::Internal { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        ApiError::InvokeFailed(e)
    }
}

/// Maps a body-reading rejection: over the limit is 413, the rest 400.
pub fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("the request body is too large: {}", r.body_text()))
    } else {
        ApiError::InvalidArgument(format!("cannot read the request body: {}", r.body_text()))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// A JSON body whose every rejection (content type, syntax, shape, size) is an [`ApiError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "this endpoint takes JSON: send Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Path parameters whose rejection (invalid percent-encoding or UTF-8) is an [`ApiError`].
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|r| ApiError::InvalidArgument(format!("invalid path: {}", r.body_text())))
    }
}

/// Parses a JSON body into `T`, with the serde message (line, column, field) on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidArgument(format!("invalid JSON body: {e}")))
}

/// The error type for a failed invocation, as a string (`timeout`, `crash`, ...).
pub fn error_type_name(t: ErrorType) -> &'static str {
    t.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_match_the_design() {
        let cases = [
            (
                ApiError::InvalidArgument("x".into()),
                400,
                "invalid_argument",
            ),
            (
                ApiError::EngineNotFound("x".into()),
                400,
                "engine_not_found",
            ),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::TooLarge("x".into()), 413, "too_large"),
            (ApiError::InvalidPackage(vec![]), 422, "invalid_package"),
            (
                ApiError::CompileFailed(String::new(), vec![]),
                422,
                "compile_failed",
            ),
            (ApiError::UrlBlocked("x".into()), 403, "url_blocked"),
            (
                ApiError::CodeFetchFailed("x".into()),
                502,
                "code_fetch_failed",
            ),
            (ApiError::Unavailable("x".into()), 503, "unavailable"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{code}");
            assert_eq!(e.code(), code);
        }
    }

    #[tokio::test]
    async fn internal_details_are_not_sent() {
        let resp = ApiError::Internal("disk /secret/path failed".into()).into_response();
        assert_eq!(resp.status(), 500);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("/secret/path"), "{text}");
        assert!(text.contains("\"code\":\"internal\""), "{text}");
    }
}
