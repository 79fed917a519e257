//! The REST API, one module per resource.

pub mod topics;
