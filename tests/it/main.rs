//! End-to-end tests: one binary, one module per area (ripgrep's layout).

mod bus_crash;
mod bus_http;
mod bus_store;
mod c_abi;
