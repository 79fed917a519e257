//! Integration tests of the host-runner: one binary, one module per area (ripgrep's layout).
//!
//! They live in the host-runner crate (not the workspace `tests/` crate) so that
//! `env!("CARGO_BIN_EXE_host-runner")` names a binary cargo has just built for them.

mod callgrind;
mod dotnet;
mod engine;
mod host;
mod lanes;
mod util;
