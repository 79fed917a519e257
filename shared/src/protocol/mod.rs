//! The supervisor <-> host protocol: an owned mirror of `schemas/host_protocol.fbs`.
//!
//! One [`Message`] per ring frame. [`Message::encode`] builds a finished `Frame` buffer;
//! [`Message::decode`] runs the FlatBuffers verifier on a buffer that was already copied out of
//! shared memory (see `ring`), then copies every field into owned Rust values, so nothing keeps
//! pointing into bytes a host could still change.
//!
//! # Layout
//! - this file: the message types, `encode`, `decode`.
//! - `link` (feature `tokio`): [`link::HostLink`], the supervisor's async request/reply API.
//! - `hot`: `Process`/`ProcessResult` decoded as borrowed views and encoded from borrowed fields
//!   (the per-call frames of a ring lane, without the owned mirror's allocations).
//! - `hot_verify`: the hand-written verifier `hot` uses for those two frames and for the
//!   plugin's `WorkerResponse` (differentially tested against the FlatBuffers verifier).

pub mod hot;
mod hot_verify;
#[cfg(feature = "tokio")]
pub mod link;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::generated::host_protocol::work_manager::host_protocol as fb;

/// Largest number of tables the verifier will visit in one frame (a LoadWorker with a large
/// config is the biggest legitimate frame: one table per config entry).
pub(crate) const MAX_TABLES: usize = 1 << 16;

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The buffer is not a valid `Frame`.
    #[error("frame of {len} bytes is not a valid host protocol FlatBuffer: {source}")]
    Invalid {
        /// Size of the frame.
        len: usize,
        /// What the verifier found.
        #[source]
        source: flatbuffers::InvalidFlatbuffer,
    },
    /// The frame has no payload or one of an unknown kind (a newer peer?).
    #[error(
        "frame carries payload kind {kind}, which this build does not know; run matching builds"
    )]
    UnknownKind {
        /// The union tag found.
        kind: u8,
    },
    /// An enum field has a value this build does not know.
    #[error("{message}.{field} has unknown value {value}; run matching builds")]
    UnknownEnum {
        /// The message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
}

/// Which engine runs a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// A native shared library.
    #[default]
    Native,
    /// A .NET assembly.
    DotNet,
    /// Python source run by CPython embedded in the host.
    Python,
}

/// Outcome of one `Process` call, as the host saw it (see the schema for each meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResultStatus {
    /// The plugin returned 0 and a valid WorkerResponse.
    #[default]
    Ok,
    /// The plugin returned 0 and no buffer.
    NoReply,
    /// The plugin returned non-zero (`code`).
    ProcessFailed,
    /// The plugin's buffer is not a valid WorkerResponse (`error` says why).
    InvalidResponse,
    /// A managed worker threw (`error` holds the text).
    WorkerException,
    /// The host has no worker of that id.
    UnknownWorker,
}

/// host -> supervisor, once the sandbox is in place.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ready {
    /// The host's pid.
    pub pid: i32,
    /// The engine this host runs.
    pub engine: EngineKind,
    /// host-runner version.
    pub version: String,
    /// Sandbox steps that took effect, e.g. "seccomp,no_new_privs,landlock".
    pub sandbox: String,
}

/// supervisor -> host: load a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadWorker {
    /// Matches the `LoadResult`.
    pub request_id: u64,
    /// The worker.
    pub worker_id: String,
    /// Its engine.
    pub engine: EngineKind,
    /// Extracted package directory (read-only for the host).
    pub package_dir: String,
    /// Native: the .so relative to package_dir; .NET: the worker dll.
    pub library_path: String,
    /// Entry point symbol or type.
    pub entry_point: String,
    /// The free-result symbol.
    pub free_result: String,
    /// Topic the worker listens on.
    pub topic: String,
    /// Worker config entries.
    pub config: Vec<(String, String)>,
    /// Concurrent calls allowed (schema default 1).
    pub max_concurrency: u32,
    /// Per-call limit for gateway calls and replies, ms (schema default 30000).
    pub timeout_ms: u32,
    /// Ring lanes for the worker's threads: thread i reads its calls from lane `lanes[i]`
    /// (docs/ring.md, "Lanes"). Empty: every call goes through the control ring.
    pub lanes: Vec<u32>,
}

/// host -> supervisor: outcome of a `LoadWorker`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadResult {
    /// The `LoadWorker`'s request id.
    pub request_id: u64,
    /// The worker.
    pub worker_id: String,
    /// Whether it loaded.
    pub ok: bool,
    /// Why not.
    pub error: String,
}

/// supervisor -> host: unload a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadWorker {
    /// Matches the `UnloadResult`.
    pub request_id: u64,
    /// The worker.
    pub worker_id: String,
}

/// host -> supervisor: outcome of an `UnloadWorker`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadResult {
    /// The `UnloadWorker`'s request id.
    pub request_id: u64,
    /// The worker.
    pub worker_id: String,
    /// Whether it unloaded cleanly.
    pub ok: bool,
    /// Why not.
    pub error: String,
}

/// supervisor -> host: run one message through a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Process {
    /// Matches the `ProcessResult`.
    pub msg_id: u64,
    /// The worker.
    pub worker_id: String,
    /// A worker_api.fbs CloudEvent.
    pub event: Vec<u8>,
}

/// host -> supervisor: the schema's `ProcessResult` table (DESIGN.md calls it Result).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessResult {
    /// The `Process`'s message id.
    pub msg_id: u64,
    /// The worker.
    pub worker_id: String,
    /// Outcome.
    pub status: ResultStatus,
    /// The plugin's return code.
    pub code: i32,
    /// A worker_api.fbs WorkerResponse (status Ok only).
    pub response: Vec<u8>,
    /// Error text.
    pub error: String,
    /// Wall time of the plugin call, ns.
    pub elapsed_ns: u64,
}

/// host -> supervisor: a log line from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    /// The worker.
    pub worker_id: String,
    /// The message being processed (0 if none).
    pub msg_id: u64,
    /// Level as the plugin gave it.
    pub level: i32,
    /// The text.
    pub message: String,
}

/// host -> supervisor: a plugin's gateway call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayCall {
    /// Matches the `GatewayReply`.
    pub call_id: u64,
    /// The worker.
    pub worker_id: String,
    /// The message being processed.
    pub msg_id: u64,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Request bytes.
    pub payload: Vec<u8>,
}

/// supervisor -> host: answer to a `GatewayCall`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayReply {
    /// The call's id.
    pub call_id: u64,
    /// 0 = success; else returned to the plugin.
    pub status: i32,
    /// Reply bytes.
    pub payload: Vec<u8>,
    /// Error text.
    pub error: String,
}

/// host -> supervisor: answer to `StatsRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// The request's id.
    pub request_id: u64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Threads in the host.
    pub threads: u32,
    /// Calls in flight.
    pub in_flight: u32,
    /// Workers loaded.
    pub workers: u32,
}

/// One frame of the host protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// host -> supervisor.
    Ready(Ready),
    /// supervisor -> host.
    LoadWorker(LoadWorker),
    /// host -> supervisor.
    LoadResult(LoadResult),
    /// supervisor -> host.
    UnloadWorker(UnloadWorker),
    /// host -> supervisor.
    UnloadResult(UnloadResult),
    /// supervisor -> host.
    Process(Process),
    /// host -> supervisor.
    ProcessResult(ProcessResult),
    /// host -> supervisor.
    Log(Log),
    /// host -> supervisor.
    GatewayCall(GatewayCall),
    /// supervisor -> host.
    GatewayReply(GatewayReply),
    /// supervisor -> host (or back), liveness.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Answer to Ping.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// supervisor -> host.
    StatsRequest {
        /// Echoed in Stats.
        request_id: u64,
    },
    /// host -> supervisor.
    Stats(Stats),
    /// supervisor -> host: finish in-flight calls up to the deadline, unload, exit 0.
    Shutdown {
        /// Milliseconds the host may take.
        deadline_ms: u32,
    },
}

fn engine_to_fb(e: EngineKind) -> fb::EngineKind {
    match e {
        EngineKind::Native => fb::EngineKind::Native,
        EngineKind::DotNet => fb::EngineKind::DotNet,
        EngineKind::Python => fb::EngineKind::Python,
    }
}

fn engine_from_fb(e: fb::EngineKind, message: &'static str) -> Result<EngineKind, ProtocolError> {
    match e {
        fb::EngineKind::Native => Ok(EngineKind::Native),
        fb::EngineKind::DotNet => Ok(EngineKind::DotNet),
        fb::EngineKind::Python => Ok(EngineKind::Python),
        other => Err(ProtocolError::UnknownEnum {
            message,
            field: "engine",
            value: other.0,
        }),
    }
}

fn status_to_fb(s: ResultStatus) -> fb::ResultStatus {
    match s {
        ResultStatus::Ok => fb::ResultStatus::Ok,
        ResultStatus::NoReply => fb::ResultStatus::NoReply,
        ResultStatus::ProcessFailed => fb::ResultStatus::ProcessFailed,
        ResultStatus::InvalidResponse => fb::ResultStatus::InvalidResponse,
        ResultStatus::WorkerException => fb::ResultStatus::WorkerException,
        ResultStatus::UnknownWorker => fb::ResultStatus::UnknownWorker,
    }
}

fn status_from_fb(s: fb::ResultStatus) -> Result<ResultStatus, ProtocolError> {
    Ok(match s {
        fb::ResultStatus::Ok => ResultStatus::Ok,
        fb::ResultStatus::NoReply => ResultStatus::NoReply,
        fb::ResultStatus::ProcessFailed => ResultStatus::ProcessFailed,
        fb::ResultStatus::InvalidResponse => ResultStatus::InvalidResponse,
        fb::ResultStatus::WorkerException => ResultStatus::WorkerException,
        fb::ResultStatus::UnknownWorker => ResultStatus::UnknownWorker,
        other => {
            return Err(ProtocolError::UnknownEnum {
                message: "ProcessResult",
                field: "status",
                value: other.0,
            });
        }
    })
}

fn s(o: Option<&str>) -> String {
    o.unwrap_or_default().to_owned()
}

fn owned_bytes(o: Option<flatbuffers::Vector<'_, u8>>) -> Vec<u8> {
    o.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

/// Runs the FlatBuffers verifier over a whole frame with the limits every decode uses (the
/// table count, and an apparent size of at most twice the frame), so that `Message::decode`
/// and the borrowing decoders of [`hot`] accept and refuse exactly the same bytes.
pub(crate) fn verify_frame(bytes: &[u8]) -> Result<fb::Frame<'_>, ProtocolError> {
    let opts = flatbuffers::VerifierOptions {
        max_tables: MAX_TABLES,
        max_apparent_size: bytes.len().saturating_mul(2).max(1 << 10),
        ..Default::default()
    };
    fb::root_as_frame_with_opts(&opts, bytes).map_err(|source| ProtocolError::Invalid {
        len: bytes.len(),
        source,
    })
}

/// Wraps a built payload in its `Frame` and finishes the builder: the last step of every encode.
pub(crate) fn finish_frame<'b>(
    b: &'b mut FlatBufferBuilder<'_>,
    kind: fb::Payload,
    payload: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> &'b [u8] {
    let frame = fb::Frame::create(
        b,
        &fb::FrameArgs {
            payload_type: kind,
            payload: Some(payload),
        },
    );
    b.finish(frame, None);
    b.finished_data()
}
/// Creates a string, or nothing for an empty one (decode maps absent back to empty).
fn opt_str<'a>(b: &mut FlatBufferBuilder<'a>, v: &str) -> Option<WIPOffset<&'a str>> {
    (!v.is_empty()).then(|| b.create_string(v))
}

fn opt_bytes<'a>(
    b: &mut FlatBufferBuilder<'a>,
    v: &[u8],
) -> Option<WIPOffset<flatbuffers::Vector<'a, u8>>> {
    (!v.is_empty()).then(|| b.create_vector(v))
}

impl Message {
    /// The message kind's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ready(_) => "Ready",
            Message::LoadWorker(_) => "LoadWorker",
            Message::LoadResult(_) => "LoadResult",
            Message::UnloadWorker(_) => "UnloadWorker",
            Message::UnloadResult(_) => "UnloadResult",
            Message::Process(_) => "Process",
            Message::ProcessResult(_) => "ProcessResult",
            Message::Log(_) => "Log",
            Message::GatewayCall(_) => "GatewayCall",
            Message::GatewayReply(_) => "GatewayReply",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::StatsRequest { .. } => "StatsRequest",
            Message::Stats(_) => "Stats",
            Message::Shutdown { .. } => "Shutdown",
        }
    }

    /// A finished `Frame` buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(self.size_hint());
        self.encode_into(&mut b).to_vec()
    }

    /// Encodes into a reusable builder (reset first) and returns the finished bytes; saves an
    /// allocation per frame on hot paths.
    pub fn encode_into<'b>(&self, b: &'b mut FlatBufferBuilder<'_>) -> &'b [u8] {
        b.reset();
        let (kind, payload) = self.build_payload(b);
        finish_frame(b, kind, payload)
    }

    fn size_hint(&self) -> usize {
        128 + match self {
            Message::Process(p) => p.event.len() + p.worker_id.len(),
            Message::ProcessResult(r) => r.response.len() + r.error.len() + r.worker_id.len(),
            Message::GatewayCall(c) => c.payload.len() + c.service.len() + c.method.len(),
            Message::GatewayReply(r) => r.payload.len() + r.error.len(),
            Message::Log(l) => l.message.len(),
            _ => 256,
        }
    }

    fn build_payload<'a>(
        &self,
        b: &mut FlatBufferBuilder<'a>,
    ) -> (fb::Payload, WIPOffset<flatbuffers::UnionWIPOffset>) {
        match self {
            Message::Ready(m) => {
                let version = opt_str(b, &m.version);
                let sandbox = opt_str(b, &m.sandbox);
                let t = fb::Ready::create(
                    b,
                    &fb::ReadyArgs {
                        pid: m.pid,
                        engine: engine_to_fb(m.engine),
                        version,
                        sandbox,
                    },
                );
                (fb::Payload::Ready, t.as_union_value())
            }
            Message::LoadWorker(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let package_dir = opt_str(b, &m.package_dir);
                let library_path = opt_str(b, &m.library_path);
                let entry_point = opt_str(b, &m.entry_point);
                let free_result = opt_str(b, &m.free_result);
                let topic = opt_str(b, &m.topic);
                let kvs: Vec<_> = m
                    .config
                    .iter()
                    .map(|(k, v)| {
                        let key = Some(b.create_string(k));
                        let value = Some(b.create_string(v));
                        fb::KeyValue::create(b, &fb::KeyValueArgs { key, value })
                    })
                    .collect();
                let config = (!kvs.is_empty()).then(|| b.create_vector(&kvs));
                let lanes = (!m.lanes.is_empty()).then(|| b.create_vector(&m.lanes));
                let t = fb::LoadWorker::create(
                    b,
                    &fb::LoadWorkerArgs {
                        request_id: m.request_id,
                        worker_id,
                        engine: engine_to_fb(m.engine),
                        package_dir,
                        library_path,
                        entry_point,
                        free_result,
                        topic,
                        config,
                        max_concurrency: m.max_concurrency,
                        timeout_ms: m.timeout_ms,
                        lanes,
                    },
                );
                (fb::Payload::LoadWorker, t.as_union_value())
            }
            Message::LoadResult(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let error = opt_str(b, &m.error);
                let t = fb::LoadResult::create(
                    b,
                    &fb::LoadResultArgs {
                        request_id: m.request_id,
                        worker_id,
                        ok: m.ok,
                        error,
                    },
                );
                (fb::Payload::LoadResult, t.as_union_value())
            }
            Message::UnloadWorker(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let t = fb::UnloadWorker::create(
                    b,
                    &fb::UnloadWorkerArgs {
                        request_id: m.request_id,
                        worker_id,
                    },
                );
                (fb::Payload::UnloadWorker, t.as_union_value())
            }
            Message::UnloadResult(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let error = opt_str(b, &m.error);
                let t = fb::UnloadResult::create(
                    b,
                    &fb::UnloadResultArgs {
                        request_id: m.request_id,
                        worker_id,
                        ok: m.ok,
                        error,
                    },
                );
                (fb::Payload::UnloadResult, t.as_union_value())
            }
            Message::Process(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let event = opt_bytes(b, &m.event);
                let t = fb::Process::create(
                    b,
                    &fb::ProcessArgs {
                        msg_id: m.msg_id,
                        worker_id,
                        event,
                    },
                );
                (fb::Payload::Process, t.as_union_value())
            }
            Message::ProcessResult(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let response = opt_bytes(b, &m.response);
                let error = opt_str(b, &m.error);
                let t = fb::ProcessResult::create(
                    b,
                    &fb::ProcessResultArgs {
                        msg_id: m.msg_id,
                        worker_id,
                        status: status_to_fb(m.status),
                        code: m.code,
                        response,
                        error,
                        elapsed_ns: m.elapsed_ns,
                    },
                );
                (fb::Payload::ProcessResult, t.as_union_value())
            }
            Message::Log(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let message = opt_str(b, &m.message);
                let t = fb::Log::create(
                    b,
                    &fb::LogArgs {
                        worker_id,
                        msg_id: m.msg_id,
                        level: m.level,
                        message,
                    },
                );
                (fb::Payload::Log, t.as_union_value())
            }
            Message::GatewayCall(m) => {
                let worker_id = opt_str(b, &m.worker_id);
                let service = opt_str(b, &m.service);
                let method = opt_str(b, &m.method);
                let payload = opt_bytes(b, &m.payload);
                let t = fb::GatewayCall::create(
                    b,
                    &fb::GatewayCallArgs {
                        call_id: m.call_id,
                        worker_id,
                        msg_id: m.msg_id,
                        service,
                        method,
                        payload,
                    },
                );
                (fb::Payload::GatewayCall, t.as_union_value())
            }
            Message::GatewayReply(m) => {
                let payload = opt_bytes(b, &m.payload);
                let error = opt_str(b, &m.error);
                let t = fb::GatewayReply::create(
                    b,
                    &fb::GatewayReplyArgs {
                        call_id: m.call_id,
                        status: m.status,
                        payload,
                        error,
                    },
                );
                (fb::Payload::GatewayReply, t.as_union_value())
            }
            Message::Ping { nonce } => {
                let t = fb::Ping::create(b, &fb::PingArgs { nonce: *nonce });
                (fb::Payload::Ping, t.as_union_value())
            }
            Message::Pong { nonce } => {
                let t = fb::Pong::create(b, &fb::PongArgs { nonce: *nonce });
                (fb::Payload::Pong, t.as_union_value())
            }
            Message::StatsRequest { request_id } => {
                let t = fb::StatsRequest::create(
                    b,
                    &fb::StatsRequestArgs {
                        request_id: *request_id,
                    },
                );
                (fb::Payload::StatsRequest, t.as_union_value())
            }
            Message::Stats(m) => {
                let t = fb::Stats::create(
                    b,
                    &fb::StatsArgs {
                        request_id: m.request_id,
                        rss_bytes: m.rss_bytes,
                        threads: m.threads,
                        in_flight: m.in_flight,
                        workers: m.workers,
                    },
                );
                (fb::Payload::Stats, t.as_union_value())
            }
            Message::Shutdown { deadline_ms } => {
                let t = fb::Shutdown::create(
                    b,
                    &fb::ShutdownArgs {
                        deadline_ms: *deadline_ms,
                    },
                );
                (fb::Payload::Shutdown, t.as_union_value())
            }
        }
    }

    /// Verifies `bytes` as a `Frame` (the verifier runs first, on a private copy the caller
    /// owns), then copies every field into an owned `Message`.
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        let frame = verify_frame(bytes)?;
        let kind = frame.payload_type();
        let unknown = || ProtocolError::UnknownKind { kind: kind.0 };
        Ok(match kind {
            fb::Payload::Ready => {
                let m = frame.payload_as_ready().ok_or_else(unknown)?;
                Message::Ready(Ready {
                    pid: m.pid(),
                    engine: engine_from_fb(m.engine(), "Ready")?,
                    version: s(m.version()),
                    sandbox: s(m.sandbox()),
                })
            }
            fb::Payload::LoadWorker => {
                let m = frame.payload_as_load_worker().ok_or_else(unknown)?;
                Message::LoadWorker(LoadWorker {
                    request_id: m.request_id(),
                    worker_id: s(m.worker_id()),
                    engine: engine_from_fb(m.engine(), "LoadWorker")?,
                    package_dir: s(m.package_dir()),
                    library_path: s(m.library_path()),
                    entry_point: s(m.entry_point()),
                    free_result: s(m.free_result()),
                    topic: s(m.topic()),
                    config: m
                        .config()
                        .map(|v| v.iter().map(|kv| (s(kv.key()), s(kv.value()))).collect())
                        .unwrap_or_default(),
                    max_concurrency: m.max_concurrency(),
                    timeout_ms: m.timeout_ms(),
                    lanes: m.lanes().map(|v| v.iter().collect()).unwrap_or_default(),
                })
            }
            fb::Payload::LoadResult => {
                let m = frame.payload_as_load_result().ok_or_else(unknown)?;
                Message::LoadResult(LoadResult {
                    request_id: m.request_id(),
                    worker_id: s(m.worker_id()),
                    ok: m.ok(),
                    error: s(m.error()),
                })
            }
            fb::Payload::UnloadWorker => {
                let m = frame.payload_as_unload_worker().ok_or_else(unknown)?;
                Message::UnloadWorker(UnloadWorker {
                    request_id: m.request_id(),
                    worker_id: s(m.worker_id()),
                })
            }
            fb::Payload::UnloadResult => {
                let m = frame.payload_as_unload_result().ok_or_else(unknown)?;
                Message::UnloadResult(UnloadResult {
                    request_id: m.request_id(),
                    worker_id: s(m.worker_id()),
                    ok: m.ok(),
                    error: s(m.error()),
                })
            }
            fb::Payload::Process => {
                let m = frame.payload_as_process().ok_or_else(unknown)?;
                Message::Process(Process {
                    msg_id: m.msg_id(),
                    worker_id: s(m.worker_id()),
                    event: owned_bytes(m.event()),
                })
            }
            fb::Payload::ProcessResult => {
                let m = frame.payload_as_process_result().ok_or_else(unknown)?;
                Message::ProcessResult(ProcessResult {
                    msg_id: m.msg_id(),
                    worker_id: s(m.worker_id()),
                    status: status_from_fb(m.status())?,
                    code: m.code(),
                    response: owned_bytes(m.response()),
                    error: s(m.error()),
                    elapsed_ns: m.elapsed_ns(),
                })
            }
            fb::Payload::Log => {
                let m = frame.payload_as_log().ok_or_else(unknown)?;
                Message::Log(Log {
                    worker_id: s(m.worker_id()),
                    msg_id: m.msg_id(),
                    level: m.level(),
                    message: s(m.message()),
                })
            }
            fb::Payload::GatewayCall => {
                let m = frame.payload_as_gateway_call().ok_or_else(unknown)?;
                Message::GatewayCall(GatewayCall {
                    call_id: m.call_id(),
                    worker_id: s(m.worker_id()),
                    msg_id: m.msg_id(),
                    service: s(m.service()),
                    method: s(m.method()),
                    payload: owned_bytes(m.payload()),
                })
            }
            fb::Payload::GatewayReply => {
                let m = frame.payload_as_gateway_reply().ok_or_else(unknown)?;
                Message::GatewayReply(GatewayReply {
                    call_id: m.call_id(),
                    status: m.status(),
                    payload: owned_bytes(m.payload()),
                    error: s(m.error()),
                })
            }
            fb::Payload::Ping => Message::Ping {
                nonce: frame.payload_as_ping().ok_or_else(unknown)?.nonce(),
            },
            fb::Payload::Pong => Message::Pong {
                nonce: frame.payload_as_pong().ok_or_else(unknown)?.nonce(),
            },
            fb::Payload::StatsRequest => Message::StatsRequest {
                request_id: frame
                    .payload_as_stats_request()
                    .ok_or_else(unknown)?
                    .request_id(),
            },
            fb::Payload::Stats => {
                let m = frame.payload_as_stats().ok_or_else(unknown)?;
                Message::Stats(Stats {
                    request_id: m.request_id(),
                    rss_bytes: m.rss_bytes(),
                    threads: m.threads(),
                    in_flight: m.in_flight(),
                    workers: m.workers(),
                })
            }
            fb::Payload::Shutdown => Message::Shutdown {
                deadline_ms: frame
                    .payload_as_shutdown()
                    .ok_or_else(unknown)?
                    .deadline_ms(),
            },
            _ => return Err(unknown()),
        })
    }
}

#[cfg(test)]
mod tests;
