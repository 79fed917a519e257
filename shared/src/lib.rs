//! What the supervisor (`workmanager`) and the `host-runner` share.
//!
//! # Brief overview
//! - [`cloudevent`]: the CloudEvent model and its JSON and FlatBuffer forms; the worker wire
//!   format of `schemas/worker_api.fbs`.
//! - [`dotnet`]: finding a .NET runtime (hostfxr + Microsoft.NETCore.App) on disk.
//! - [`protocol`]: the supervisor <-> host messages (`schemas/host_protocol.fbs`) and, with the
//!   `tokio` feature, the async `HostLink`.
//! - [`ring`]: the shared-memory transport between the supervisor and a host-runner.
//! - [`generated`]: flatc output for `schemas/*.fbs`, committed, never edited by hand.
//! - [`package`]: worker packages (`.nupkg`): validation for both engines, hostile-archive
//!   checks, content-addressed extraction.
//!
//! Nothing here listens on the network or loads plugin code; both binaries link it.

pub mod cloudevent;
pub mod dotnet;
pub mod generated;
pub mod kernel;
pub mod package;
pub mod protocol;
pub mod ring;
pub mod sync;

pub use cloudevent::{CloudEvent, CloudEventError, WorkerResponse};
