//! The RPCs of `WorkManager`: name, the scope each needs (the same as its REST twin) and the
//! audit action of those that change something. This is the gRPC side of the REST route table.

use crate::api::auth::Need;

/// One RPC of the `WorkManager` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST /v1/workers`.
    CreateWorker,
    /// `POST /v1/workers/{id}/start`.
    StartWorker,
    /// `POST /v1/workers/{id}/stop`.
    StopWorker,
    /// `POST /v1/workers/{id}/code`.
    LoadCode,
    /// `DELETE /v1/workers/{id}`.
    DeleteWorker,
    /// `GET /v1/workers`.
    ListWorkers,
    /// `GET /v1/workers/{id}/history`.
    GetWorkerHistory,
    /// `POST /v1/workers/recover`.
    RecoverWorkers,
    /// `PUT /v1/workers/{id}/tags/{key}`.
    SetTag,
    /// `PUT /v1/workers/{id}/tags`.
    SetTags,
    /// `GET /v1/workers/{id}/tags/{key}`.
    GetTag,
    /// `GET /v1/workers/{id}/tags`.
    GetTags,
}

impl Method {
    /// Every RPC, in the order of the proto.
    pub const ALL: [Method; 12] = [
        Method::CreateWorker,
        Method::StartWorker,
        Method::StopWorker,
        Method::LoadCode,
        Method::DeleteWorker,
        Method::ListWorkers,
        Method::GetWorkerHistory,
        Method::RecoverWorkers,
        Method::SetTag,
        Method::SetTags,
        Method::GetTag,
        Method::GetTags,
    ];

    /// The RPC name as in the proto (PascalCase).
    pub fn name(self) -> &'static str {
        match self {
            Method::CreateWorker => "CreateWorker",
            Method::StartWorker => "StartWorker",
            Method::StopWorker => "StopWorker",
            Method::LoadCode => "LoadCode",
            Method::DeleteWorker => "DeleteWorker",
            Method::ListWorkers => "ListWorkers",
            Method::GetWorkerHistory => "GetWorkerHistory",
            Method::RecoverWorkers => "RecoverWorkers",
            Method::SetTag => "SetTag",
            Method::SetTags => "SetTags",
            Method::GetTag => "GetTag",
            Method::GetTags => "GetTags",
        }
    }

    /// The RPC named `name` (exact, as the proto spells it).
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The scope a caller needs: `admin` for changes, `read` for the rest (as in REST).
    pub fn need(self) -> Need {
        match self {
            Method::ListWorkers | Method::GetWorkerHistory | Method::GetTag | Method::GetTags => {
                Need::Read
            }
            _ => Need::Admin,
        }
    }

    /// The audit action of a change (the names REST's audit uses), `None` for reads.
    pub fn audit_action(self) -> Option<&'static str> {
        Some(match self {
            Method::CreateWorker => "create",
            Method::StartWorker => "start",
            Method::StopWorker => "stop",
            Method::LoadCode => "code",
            Method::DeleteWorker => "delete",
            Method::RecoverWorkers => "recover",
            Method::SetTag | Method::SetTags => "tags",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scopes_match_rest() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
            // A change is audited exactly when it needs admin, as on the REST side.
            assert_eq!(m.audit_action().is_some(), m.need() == Need::Admin, "{m:?}");
        }
        assert_eq!(Method::parse("createWorker"), None);
        // The REST twins' scopes, from the REST route table.
        let rest = crate::api::route_policies();
        let need_of = |method: &str, path: &str| {
            rest.iter()
                .find(|p| p.method.as_str() == method && p.path == path)
                .map(|p| p.need)
        };
        assert_eq!(
            need_of("POST", "/v1/workers"),
            Some(Method::CreateWorker.need())
        );
        assert_eq!(
            need_of("GET", "/v1/workers"),
            Some(Method::ListWorkers.need())
        );
        assert_eq!(
            need_of("PUT", "/v1/workers/{id}/tags/{key}"),
            Some(Method::SetTag.need())
        );
        assert_eq!(
            need_of("GET", "/v1/workers/{id}/tags/{key}"),
            Some(Method::GetTag.need())
        );
        assert_eq!(
            need_of("GET", "/v1/workers/{id}/history"),
            Some(Method::GetWorkerHistory.need())
        );
    }
}
