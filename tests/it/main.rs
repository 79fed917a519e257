//! End-to-end tests: one binary, one module per area (ripgrep's layout).
mod c_abi;
