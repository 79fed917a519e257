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
//! - [`metrics`], [`shutdown`].
//!
//! **Invariant:** nothing in this crate loads plugin code; it talks to hosts only through
//! [`runtime::Runtime`].

pub mod api;
pub mod codefetch;
pub mod codestore;
pub mod config;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod shutdown;

pub use config::{Config, ServeArgs};
pub use daemon::{Daemon, DaemonError};
pub use registry::Registry;
pub use runtime::Runtime;
