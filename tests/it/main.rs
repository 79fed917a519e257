//! End-to-end tests: one binary, one module per area (ripgrep's layout).

/// The REST API against the real daemon binary.
mod api;
mod c_abi;
