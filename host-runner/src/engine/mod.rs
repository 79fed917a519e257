//! Engines run plugin code: [`native`] for `.so` workers, [`dotnet`] for .NET assemblies in
//! CoreCLR; both implement the [`Engine`] trait.
//!
//! The trait is engine-neutral: `load` takes the fields of a `LoadWorker` frame, `process`
//! takes CloudEvent bytes and returns the outcome as the fields of a `ProcessResult` frame,
//! `unload` consumes the loaded worker. Threads, queues, crash marks and hot reload live in
//! `crate::worker`, not in the engines.

pub mod dotnet;
pub mod env;
pub mod native;
#[cfg(feature = "python")]
pub mod python;
pub mod reply_buf;

use std::path::PathBuf;

/// The fields of a `LoadWorker` frame an engine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    pub worker_id: String,
    /// Extracted package directory; owned by the supervisor, read-only for the host.
    pub package_dir: PathBuf,
    /// Native: the `.so`, relative to `package_dir`. .NET: the worker assembly.
    pub library_path: String,
    /// Native: `virtufinEntryPoint` (default `Process`).
    pub entry_point: String,
    /// Native: `virtufinFreeResult` (default `FreeResult`).
    pub free_result: String,
    pub topic: String,
    pub config: Vec<(String, String)>,
    /// Calls of this worker that may run at once (at least 1).
    pub max_concurrency: u32,
    /// Bound on gateway calls, in milliseconds.
    pub timeout_ms: u32,
}

/// Mirrors `ResultStatus` of `schemas/host_protocol.fbs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultStatus {
    /// Return 0 and a buffer that passed the WorkerResponse verifier.
    Ok,
    /// No reply: a managed worker returned null. (A native plugin that returns 0 without a
    /// buffer breaks the seed's contract and is `InvalidResponse`.)
    NoReply,
    /// Non-zero return (`code`).
    ProcessFailed,
    /// A buffer that is not a valid WorkerResponse (`error` says why).
    InvalidResponse,
    /// A managed worker threw.
    WorkerException,
    /// No worker of that id is loaded.
    UnknownWorker,
}

impl ResultStatus {
    /// The wire protocol's value.
    pub fn to_wire(self) -> wm_shared::protocol::ResultStatus {
        use wm_shared::protocol::ResultStatus as W;
        match self {
            ResultStatus::Ok => W::Ok,
            ResultStatus::NoReply => W::NoReply,
            ResultStatus::ProcessFailed => W::ProcessFailed,
            ResultStatus::InvalidResponse => W::InvalidResponse,
            ResultStatus::WorkerException => W::WorkerException,
            ResultStatus::UnknownWorker => W::UnknownWorker,
        }
    }
}

/// The outcome of one call: the fields of a `ProcessResult` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    pub status: ResultStatus,
    pub code: i32,
    /// A verified WorkerResponse (status Ok only).
    pub response: Vec<u8>,
    pub error: String,
    pub elapsed_ns: u64,
}

impl ProcessOutcome {
    /// An outcome with only a status and an error text.
    pub fn failed(status: ResultStatus, error: impl Into<String>) -> Self {
        ProcessOutcome {
            status,
            code: 0,
            response: Vec::new(),
            error: error.into(),
            elapsed_ns: 0,
        }
    }
}

/// An engine: loads workers, runs calls, unloads them.
///
/// `process` may be called from several threads at once for one worker (its
/// `max_concurrency`), and for different workers concurrently.
pub trait Engine: Send + Sync + 'static {
    /// A loaded worker.
    type Worker: Send + Sync + 'static;
    /// Why a load or unload failed; its Display text goes into `LoadResult.error`.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads a worker. Runs plugin code (library constructors, static initialisers).
    fn load(&self, spec: &LoadSpec) -> Result<Self::Worker, Self::Error>;

    /// Runs one call with the encoded CloudEvent `event`; never panics on plugin misbehaviour.
    fn process(&self, worker: &Self::Worker, msg_id: u64, event: &[u8]) -> ProcessOutcome;

    /// Unloads a worker once no call is running on it.
    fn unload(&self, worker: Self::Worker) -> Result<(), Self::Error>;
}

/// Display of an error with its sources, `a: b: c`, for `LoadResult.error` and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}
