//! [`ApiError`] as a gRPC status. The REST error code travels too, in the `wm-error-code`
//! metadata entry, so a client can tell an invalid package from another invalid argument.
//!
//! | gRPC code | REST codes |
//! |---|---|
//! | `INVALID_ARGUMENT` | `invalid_argument`, `engine_not_found`, `invalid_package`, `unsupported_media_type` |
//! | `NOT_FOUND` | `not_found` |
//! | `UNAUTHENTICATED` | `unauthorized` |
//! | `PERMISSION_DENIED` | `forbidden`, `url_blocked`, `invalid_signature`, `host_not_allowed`, `origin_not_allowed` |
//! | `FAILED_PRECONDITION` | `conflict`, `load_failed` |
//! | `RESOURCE_EXHAUSTED` | `too_large`, `rate_limited` |
//! | `UNAVAILABLE` | `code_fetch_failed`, `unavailable` |
//! | `ABORTED` | `invoke_failed` |
//! | `UNIMPLEMENTED` | `method_not_allowed` |
//! | `INTERNAL` | `internal` (the details go to the log only) |

use tonic::{Code, Status};

use crate::api::error::ApiError;

/// The metadata key that carries the REST error code.
pub const ERROR_CODE_KEY: &str = "wm-error-code";

/// The gRPC code of an error.
pub fn code_of(e: &ApiError) -> Code {
    match e {
        ApiError::InvalidArgument(_)
        | ApiError::EngineNotFound(_)
        | ApiError::InvalidPackage(_)
        | ApiError::CompileFailed(..)
        | ApiError::UnsupportedMediaType(_) => Code::InvalidArgument,
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::Unauthorized => Code::Unauthenticated,
        ApiError::Forbidden(_)
        | ApiError::UrlBlocked(_)
        | ApiError::InvalidSignature(_)
        | ApiError::HostNotAllowed(_)
        | ApiError::OriginNotAllowed(_) => Code::PermissionDenied,
        ApiError::Conflict(_) | ApiError::LoadFailed(_) => Code::FailedPrecondition,
        ApiError::TooLarge(_) | ApiError::RateLimited { .. } => Code::ResourceExhausted,
        ApiError::CodeFetchFailed(_) | ApiError::Unavailable(_) => Code::Unavailable,
        ApiError::InvokeFailed(_) => Code::Aborted,
        ApiError::MethodNotAllowed => Code::Unimplemented,
        ApiError::Internal(_) => Code::Internal,
    }
}

/// The name a code has in the gRPC spec (`NOT_FOUND`), as the gateway's `status` shows it.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The message a client sees: internal details stay in the log, as on the REST side.
pub fn client_message(e: &ApiError) -> String {
    match e {
        ApiError::Internal(_) => {
            tracing::error!(error = %e, "gRPC call failed");
            "something went wrong inside workmanager; the daemon log has the details".to_owned()
        }
        ApiError::RateLimited { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The status of an error, with `wm-error-code` metadata.
pub fn to_status(e: &ApiError) -> Status {
    let mut s = Status::new(code_of(e), client_message(e));
    if let Ok(v) = e.code().parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    if let ApiError::RateLimited { retry_after, .. } = e
        && let Ok(v) = retry_after.to_string().parse()
    {
        s.metadata_mut().insert("retry-after", v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes() {
        assert_eq!(code_of(&ApiError::worker_not_found("x")), Code::NotFound);
        assert_eq!(
            code_of(&ApiError::InvalidArgument("mimeType is required".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(&ApiError::InvalidPackage(vec!["no nuspec".into()])),
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(&ApiError::UrlBlocked("x".into())),
            Code::PermissionDenied
        );
        assert_eq!(
            code_of(&ApiError::CodeFetchFailed("x".into())),
            Code::Unavailable
        );
        let s = to_status(&ApiError::InvalidPackage(vec!["no nuspec".into()]));
        assert_eq!(s.metadata().get(ERROR_CODE_KEY).unwrap(), "invalid_package");
        let hidden = to_status(&ApiError::Internal("disk /secret failed".into()));
        assert!(!hidden.message().contains("secret"));
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
