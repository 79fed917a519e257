//! End-to-end tests: one binary, one module per area (ripgrep's layout).

/// The REST API against the real daemon binary.
mod api;
mod bus_contract;
mod bus_crash;
mod bus_http;
mod bus_resume;
mod bus_rules;
mod bus_store;
mod c_abi;
mod chaos;
mod cluster;
mod containment;
mod dotnet_daemon;
mod failures;
mod host_limits;
mod runtime;
mod sandbox_layers;
mod security;
