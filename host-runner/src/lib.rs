//! The host-runner: the sandboxed process that runs worker plugins for the supervisor.
//!
//! # Brief overview
//! - [`engine`]: the engines; [`engine::dotnet`] hosts CoreCLR and runs managed workers.

pub mod engine;
