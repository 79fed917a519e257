//! The gRPC API: the original's `WorkManager` service (`schemas/workmanager.proto`, 12 unary
//! RPCs), server reflection and `grpc.health.v1`, on `--grpc-listen` (`127.0.0.1:25002`).
//!
//! **Boundary:** `schemas/workmanager.proto` is the public contract (docs/grpc.md).
//! **Invariant:** every RPC runs the same operation as its REST twin ([`ops`] calls
//! [`crate::control`]), needs the same scope ([`methods::Method::need`]) and is authorized by
//! the same tokens, certificates and Unix peer rules ([`crate::api::authorize_call`]).
//!
//! - [`methods`]: the RPC names, their scopes and audit actions (the gRPC route table).
//! - [`ops`]: each RPC as a plain function over the control plane, shared with
//!   `POST /v1/gateway/invoke-json` ([`json`]).
//! - [`service`]: the tonic service: authorize, run the op, audit, map errors ([`status`]).
//! - [`server`]: listeners (TCP, TLS with ALPN `h2`, Unix sockets), reflection, health.

pub mod json;
pub mod methods;
pub mod ops;
pub mod server;
pub mod service;
pub mod status;

/// The code generated from `schemas/workmanager.proto` (tonic + prost, see `build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("virtufin.workmanager");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("workmanager_descriptor");
}

/// The full gRPC name of the service.
pub const SERVICE_NAME: &str = "virtufin.workmanager.WorkManager";
