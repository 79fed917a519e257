//! The JSON form of the `WorkManager` messages and `POST /v1/gateway/invoke-json`, the API
//! gateway's REST form of the RPCs: `{"service":"workmanager","method":"CreateWorker",
//! "request_data":"<JSON>"}` -> `{success, status, message, response_data}`.
//!
//! JSON follows proto-JSON: field names as in the proto (snake_case; lowerCamelCase accepted
//! in requests), `bytes` as base64, a `CodeSource` as `{"url": ...}` or `{"content": ...}`, the
//! worker status by its short name (`"RUNNING"`, as the original's gateway shows it). The
//! serde derives come from `build.rs`; the helpers below are named there.

use serde::{Deserialize, Serialize};

use super::methods::Method;
use super::ops::Ops;
use super::pb;
use super::status::{code_name, code_of};
use crate::api::auth::{self, Principal};
use crate::api::error::ApiError;

/// `bytes` fields as standard base64 (proto-JSON).
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads base64 (standard or URL-safe alphabet, padded or not, as proto-JSON allows).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }

    /// The decoding of [`deserialize`].
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        let t = s.trim().trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .map_err(|e| format!("not valid base64: {e}"))
    }
}

/// `CodeSource` as proto-JSON: `{"url": ...}` or `{"content": "<base64>"}`, plus `sha256` and
/// `signature` when set.
#[derive(Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CodeSourceJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    sha256: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    signature: String,
}

impl Serialize for pb::CodeSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        let (url, content) = match &self.source {
            Some(pb::code_source::Source::Url(u)) => (Some(u.clone()), None),
            Some(pb::code_source::Source::Content(b)) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
            None => (None, None),
        };
        CodeSourceJson {
            url,
            content,
            sha256: self.sha256.clone(),
            signature: self.signature.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for pb::CodeSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let j = CodeSourceJson::deserialize(d)?;
        let source = match (j.url, j.content) {
            (Some(_), Some(_)) => {
                return Err(D::Error::custom(
                    "code_source has both 'url' and 'content'; give one",
                ));
            }
            (Some(u), None) => Some(pb::code_source::Source::Url(u)),
            (None, Some(c)) => Some(pb::code_source::Source::Content(
                base64_bytes::decode(&c).map_err(D::Error::custom)?,
            )),
            (None, None) => None,
        };
        Ok(pb::CodeSource {
            source,
            sha256: j.sha256,
            signature: j.signature,
        })
    }
}

/// `WorkerInfo.status` as `"RUNNING"`; in requests the full enum name or the number work too.
pub mod status_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::grpc::pb::WorkerStatus;

    /// `2` -> `"RUNNING"`.
    pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match WorkerStatus::try_from(*v) {
            Ok(st) => s.serialize_str(
                st.as_str_name()
                    .strip_prefix("WORKER_STATUS_")
                    .unwrap_or(st.as_str_name()),
            ),
            Err(_) => s.serialize_i32(*v),
        }
    }

    /// `"RUNNING"`, `"WORKER_STATUS_RUNNING"` or `2`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => {
                let full = if s.starts_with("WORKER_STATUS_") {
                    s.clone()
                } else {
                    format!("WORKER_STATUS_{s}")
                };
                WorkerStatus::from_str_name(&full)
                    .map(|v| v as i32)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown status '{s}'")))
            }
        }
    }
}

/// `POST /v1/gateway/invoke-json` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeJsonRequest {
    /// The backend: `workmanager` (the only one this daemon serves).
    pub service: String,
    /// The RPC, as in the proto (`CreateWorker`).
    pub method: String,
    /// The request message as proto-JSON, in a string (empty = `{}`).
    #[serde(default, alias = "requestData")]
    pub request_data: String,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvokeJsonResponse {
    /// Whether the call succeeded (`status` is `OK`).
    pub success: bool,
    /// The gRPC status code name (`OK`, `NOT_FOUND`, `INVALID_ARGUMENT`, ...).
    pub status: String,
    /// Empty on success, else what went wrong and what to do.
    pub message: String,
    /// The response message as proto-JSON, in a string (`""` on failure).
    pub response_data: String,
    /// The REST error code of a failure (`invalid_package`, ...); absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl InvokeJsonResponse {
    fn ok(response_data: String) -> Self {
        InvokeJsonResponse {
            success: true,
            status: "OK".into(),
            message: String::new(),
            response_data,
            error_code: None,
        }
    }

    /// The answer for an error.
    pub fn failed(e: &ApiError) -> Self {
        InvokeJsonResponse {
            success: false,
            status: code_name(code_of(e)).into(),
            message: super::status::client_message(e),
            response_data: String::new(),
            error_code: Some(e.code().into()),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(method: Method, data: &str) -> Result<T, ApiError> {
    let data = if data.trim().is_empty() { "{}" } else { data };
    serde_json::from_str(data).map_err(|e| {
        ApiError::InvalidArgument(format!(
            "request_data is not a valid {}Request in JSON: {e}",
            method.name()
        ))
    })
}

fn render<T: Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(format!("response to JSON: {e}")))
}

/// Runs one RPC from its JSON request for `principal` (who must hold the RPC's scope), and
/// returns its JSON response.
pub async fn invoke(
    ops: &Ops,
    principal: &Principal,
    method: Method,
    data: &str,
) -> Result<String, ApiError> {
    let sec = &ops.state().control.config().security;
    if !auth::allows(&principal.scopes, method.need(), None, sec.metrics_public) {
        let scope = method.need().scope_name(None);
        return Err(ApiError::Forbidden(format!(
            "{} lacks the scope '{scope}' that workmanager/{} needs; use a token that has it (workmanager token create --scope {scope})",
            principal.who,
            method.name()
        )));
    }
    macro_rules! run {
        ($op:ident, $req:ty) => {{
            let req: $req = parse(method, data)?;
            render(&ops.$op(req).await?)
        }};
    }
    match method {
        Method::CreateWorker => run!(create_worker, pb::CreateWorkerRequest),
        Method::StartWorker => run!(start_worker, pb::StartWorkerRequest),
        Method::StopWorker => run!(stop_worker, pb::StopWorkerRequest),
        Method::LoadCode => run!(load_code, pb::LoadCodeRequest),
        Method::DeleteWorker => run!(delete_worker, pb::DeleteWorkerRequest),
        Method::ListWorkers => run!(list_workers, pb::ListWorkersRequest),
        Method::GetWorkerHistory => run!(get_worker_history, pb::GetWorkerHistoryRequest),
        Method::RecoverWorkers => run!(recover_workers, pb::RecoverWorkersRequest),
        Method::SetTag => run!(set_tag, pb::SetTagRequest),
        Method::SetTags => run!(set_tags, pb::SetTagsRequest),
        Method::GetTag => run!(get_tag, pb::GetTagRequest),
        Method::GetTags => run!(get_tags, pb::GetTagsRequest),
    }
}

/// The whole gateway call: checks the service and method names, runs the RPC, and wraps the
/// outcome (success or failure) in the envelope.
pub async fn gateway(
    ops: &Ops,
    principal: &Principal,
    req: &InvokeJsonRequest,
) -> InvokeJsonResponse {
    if !req.service.eq_ignore_ascii_case("workmanager") {
        return InvokeJsonResponse::failed(&ApiError::NotFound(format!(
            "service '{}' is not served here; this daemon serves 'workmanager'",
            req.service
        )));
    }
    let Some(method) = Method::parse(&req.method) else {
        let e = ApiError::MethodNotAllowed;
        let mut r = InvokeJsonResponse::failed(&e);
        r.message = format!(
            "workmanager has no method '{}'; it has {}",
            req.method,
            Method::ALL.map(Method::name).join(", ")
        );
        return r;
    };
    match invoke(ops, principal, method, &req.request_data).await {
        Ok(data) => InvokeJsonResponse::ok(data),
        Err(e) => InvokeJsonResponse::failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_source_is_proto_json() {
        let r: pb::CreateWorkerRequest = serde_json::from_str(
            r#"{"code_source":{"content":"AQID"},"mime_type":"application/x-native-dll","topic":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            r.code_source.unwrap().source,
            Some(pb::code_source::Source::Content(vec![1, 2, 3]))
        );
        let r: pb::CreateWorkerRequest = serde_json::from_str(
            r#"{"codeSource":{"url":"https://x/p.nupkg","sha256":"ab"},"mimeType":"m","topic":"t","tags":{"a":"b"}}"#,
        )
        .unwrap();
        let cs = r.code_source.unwrap();
        assert_eq!(
            cs.source,
            Some(pb::code_source::Source::Url("https://x/p.nupkg".into()))
        );
        assert_eq!(cs.sha256, "ab");
        assert_eq!(r.mime_type, "m");
        assert_eq!(r.tags.get("a").map(String::as_str), Some("b"));
        let empty: pb::CodeSource = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.source, None);
        assert!(serde_json::from_str::<pb::CodeSource>(r#"{"content":"!!"}"#).is_err());
        let out = serde_json::to_value(pb::CodeSource {
            source: Some(pb::code_source::Source::Content(vec![1, 2, 3])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(out["content"], "AQID");
    }

    #[test]
    fn status_is_its_short_name() {
        let w = pb::WorkerInfo {
            status: pb::WorkerStatus::Running as i32,
            ..Default::default()
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["status"], "RUNNING");
        let back: pb::WorkerInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back.status, pb::WorkerStatus::Running as i32);
        let full: pb::WorkerInfo =
            serde_json::from_str(r#"{"status":"WORKER_STATUS_ERROR"}"#).unwrap();
        assert_eq!(full.status, pb::WorkerStatus::Error as i32);
    }

    #[test]
    fn failures_carry_the_grpc_code_name() {
        let r = InvokeJsonResponse::failed(&ApiError::worker_not_found("w1"));
        assert!(!r.success);
        assert_eq!(r.status, "NOT_FOUND");
        assert_eq!(r.error_code.as_deref(), Some("not_found"));
        assert!(r.message.contains("w1"));
    }
}
