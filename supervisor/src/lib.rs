//! `wm_supervisor`: the workmanager daemon as a library, so tests call plain functions.
//!
//! # Layout
//! - [`bus`]: the durable embedded bus (the [`bus::Bus`] trait, its SQLite implementation,
//!   dead letters).
//! - [`events`]: lifecycle and infra CloudEvents published on the bus.
//! - [`api`]: the REST API (`api::topics` publishes and streams topic events).

pub mod api;
pub mod bus;
pub mod events;
