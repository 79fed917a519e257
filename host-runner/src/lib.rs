//! The host-runner: the sandboxed process that runs worker plugins for the supervisor.
//!
//! # Brief overview
//! - [`sandbox`]: the ordered start-up steps (fds, environment, rlimits, pdeathsig,
//!   namespaces, capabilities, no_new_privs, Landlock, seccomp).
//! - [`engine`]: the engine-neutral [`engine::Engine`] trait, the native (.so) engine and the
//!   .NET engine (CoreCLR through hostfxr, see docs/dotnet.md).
//! - [`ffi`]: the C ABI of `schemas/virtufin_worker_api_c.h` and the host callbacks.
//! - [`crash`]: the fatal-signal handler that records the culprit in a crash slot.
//! - [`exit`]: the documented exit codes.
//! - [`host`]: start-up order and the frame loop; [`worker`]: per-worker threads and queues,
//!   hot reload; [`handoff`]: the spin-then-park queue between them; [`lane`]: a worker
//!   thread's own ring lane (calls that bypass the frame loop). Frames are
//!   `wm_shared::protocol` messages.
//!
//! The binary (`src/main.rs`) parses arguments, maps the ring, enters the sandbox and runs
//! the frame loop. Nothing here listens on the network or touches the registry.

pub mod crash;
pub mod engine;
pub mod exit;
pub mod ffi;
pub mod handoff;
pub mod host;
pub mod lane;
pub mod sandbox;
pub mod worker;
