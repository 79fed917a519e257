//! The `workmanager` daemon as a library (`wm_supervisor`): the binary is a thin `main.rs`.
//!
//! # Brief overview
//! - [`config`]: settings in two stages (raw strings with their origin, then validated).
//! - [`daemon`]: wiring; [`daemon::Daemon::new`] then [`daemon::Daemon::run`].
//! - [`api`]: the REST API ([`api::router`]), thin handlers over [`control`].
//! - [`control`]: create/start/stop/reload/delete/tags/invoke/recover as plain functions.
//! - [`registry`]: the [`registry::Store`] trait and its SQLite implementation.
//! - [`codestore`] and [`codefetch`]: content-addressed blobs; safe downloads from URLs.
//! - [`runtime`]: the [`runtime::Runtime`] trait the host pool and dispatcher implement.
//! - [`bus`] and [`events`]: the durable embedded bus, dead letters, lifecycle/infra events.
//! - [`host_runtime`]: the real [`runtime::Runtime`]: [`pool`] (host processes) +
//!   [`dispatcher`] (events through workers) + [`gateway`] (plugins' `gateway_call`).
//! - [`serve`]: `workmanager serve`, everything put together.
//! - [`grpc`]: the gRPC API (the original's `WorkManager` service) over the same operations.
//! - [`telemetry`]: logs, OpenTelemetry traces (OTLP), trace context on events.
//! - [`cli`]: the command-line client (`workmanager workers ...`, `pack`, `inspect`).
//! - [`worker_limits`]: a worker's own resource limits (`limits.memoryBytes`) per engine.
//! - [`metrics`], [`shutdown`].
//!
//! **Invariant:** nothing in this crate loads plugin code; it talks to hosts only through
//! [`runtime::Runtime`].

pub mod api;
pub mod audit;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod codefetch;
pub mod codestore;
pub mod config;
pub mod control;
pub mod csharp_source;
pub mod daemon;
pub mod dispatcher;
pub mod engines;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod host_runtime;
pub mod listen;
pub mod metrics;
pub mod package_guard;
pub mod pool;
pub mod python_deps;
pub mod python_policy;
pub mod registry;
pub mod runtime;
pub mod sandbox_plan;
pub mod serve;
pub mod shutdown;
pub mod signature;
pub mod sync;
pub mod telemetry;
pub mod worker_limits;

pub use config::{Config, ServeArgs};
pub use daemon::{Daemon, DaemonError};
pub use registry::Registry;
pub use runtime::Runtime;
