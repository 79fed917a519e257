//! The C ABI between the host and native plugins: [`abi`] mirrors
//! `schemas/virtufin_worker_api_c.h`, [`callbacks`] implements the `VirtufinHost` callbacks.

pub mod abi;
pub mod callbacks;
