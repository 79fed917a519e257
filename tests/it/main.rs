//! End-to-end tests: one binary, one module per area (ripgrep's layout).

/// The REST API against the real daemon binary.
mod api;
mod bus_commit_fails;
mod bus_contract;
mod bus_crash;
mod bus_http;
mod bus_inline;
mod bus_join;
mod bus_resume;
mod bus_rules;
mod bus_store;
mod bus_wal;
mod c_abi;
mod chaos;
/// The `workmanager` command-line client (issue 18).
mod cli;
mod cluster;
mod cluster_registry;
mod cluster_retries;
mod containment;
mod csharp_source;
mod dotnet_daemon;
mod failures;
mod grpc;
mod host_limits;
mod python;
mod python_wheels;
mod registry_contract;
mod runtime;
mod sandbox_layers;
mod security;
mod self_child;
mod traces;
/// The /ui dashboard in headless Chromium (issue 18).
mod ui;
mod worker_limits;
