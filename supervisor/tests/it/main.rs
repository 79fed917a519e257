//! The supervisor crate's integration tests: the REST API through `Router::oneshot`, without
//! a socket (one binary, one module per area).

mod api;
mod cloudevents_fuzz;
mod scopes;
