//! Owned mirror of `schemas/host_protocol.fbs`, shaped exactly like the `wm_shared::protocol`
//! contract (`Message`, one plain struct per table, `encode`/`decode`).
//!
//! Stop-gap: the shared `protocol` module is being written on the `ring` branch; until it is
//! merged, the host-runner (and its tests, acting as a supervisor) use this one. Swapping is a
//! change of `use` lines: the names and fields are the contract's.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use wm_shared::generated::host_protocol::work_manager::host_protocol as fb;

/// Decoding failed: the bytes are not a valid `Frame`.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame failed the FlatBuffer verifier: {0}")]
    Invalid(#[from] flatbuffers::InvalidFlatbuffer),
    #[error("frame has no payload or an unknown payload type {0}")]
    UnknownPayload(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Native,
    DotNet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultStatus {
    #[default]
    Ok,
    NoReply,
    ProcessFailed,
    InvalidResponse,
    WorkerException,
    UnknownWorker,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ready {
    pub pid: i32,
    pub engine: EngineKind,
    pub version: String,
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadWorker {
    pub request_id: u64,
    pub worker_id: String,
    pub engine: EngineKind,
    pub package_dir: String,
    pub library_path: String,
    pub entry_point: String,
    pub free_result: String,
    pub topic: String,
    pub config: Vec<(String, String)>,
    pub max_concurrency: u32,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadResult {
    pub request_id: u64,
    pub worker_id: String,
    pub ok: bool,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadWorker {
    pub request_id: u64,
    pub worker_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadResult {
    pub request_id: u64,
    pub worker_id: String,
    pub ok: bool,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Process {
    pub msg_id: u64,
    pub worker_id: String,
    pub event: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessResult {
    pub msg_id: u64,
    pub worker_id: String,
    pub status: ResultStatus,
    pub code: i32,
    pub response: Vec<u8>,
    pub error: String,
    pub elapsed_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    pub worker_id: String,
    pub msg_id: u64,
    pub level: i32,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayCall {
    pub call_id: u64,
    pub worker_id: String,
    pub msg_id: u64,
    pub service: String,
    pub method: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayReply {
    pub call_id: u64,
    pub status: i32,
    pub payload: Vec<u8>,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub request_id: u64,
    pub rss_bytes: u64,
    pub threads: u32,
    pub in_flight: u32,
    pub workers: u32,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready(Ready),
    LoadWorker(LoadWorker),
    LoadResult(LoadResult),
    UnloadWorker(UnloadWorker),
    UnloadResult(UnloadResult),
    Process(Process),
    ProcessResult(ProcessResult),
    Log(Log),
    GatewayCall(GatewayCall),
    GatewayReply(GatewayReply),
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    StatsRequest { request_id: u64 },
    Stats(Stats),
    Shutdown { deadline_ms: u32 },
}

fn engine_to_fb(e: EngineKind) -> fb::EngineKind {
    match e {
        EngineKind::Native => fb::EngineKind::Native,
        EngineKind::DotNet => fb::EngineKind::DotNet,
    }
}

fn engine_from_fb(e: fb::EngineKind) -> EngineKind {
    if e == fb::EngineKind::DotNet {
        EngineKind::DotNet
    } else {
        EngineKind::Native
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

fn status_from_fb(s: fb::ResultStatus) -> ResultStatus {
    match s {
        fb::ResultStatus::NoReply => ResultStatus::NoReply,
        fb::ResultStatus::ProcessFailed => ResultStatus::ProcessFailed,
        fb::ResultStatus::InvalidResponse => ResultStatus::InvalidResponse,
        fb::ResultStatus::WorkerException => ResultStatus::WorkerException,
        fb::ResultStatus::UnknownWorker => ResultStatus::UnknownWorker,
        _ => ResultStatus::Ok,
    }
}

fn s(x: Option<&str>) -> String {
    x.unwrap_or_default().to_string()
}

fn b(x: Option<flatbuffers::Vector<'_, u8>>) -> Vec<u8> {
    x.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

impl Message {
    /// A finished `Frame` buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut f = FlatBufferBuilder::with_capacity(256);
        let (ty, off): (fb::Payload, WIPOffset<flatbuffers::UnionWIPOffset>) = match self {
            Message::Ready(m) => {
                let version = f.create_string(&m.version);
                let sandbox = f.create_string(&m.sandbox);
                let o = fb::Ready::create(
                    &mut f,
                    &fb::ReadyArgs {
                        pid: m.pid,
                        engine: engine_to_fb(m.engine),
                        version: Some(version),
                        sandbox: Some(sandbox),
                    },
                );
                (fb::Payload::Ready, o.as_union_value())
            }
            Message::LoadWorker(m) => {
                let kvs: Vec<_> = m
                    .config
                    .iter()
                    .map(|(k, v)| {
                        let key = f.create_string(k);
                        let value = f.create_string(v);
                        fb::KeyValue::create(
                            &mut f,
                            &fb::KeyValueArgs {
                                key: Some(key),
                                value: Some(value),
                            },
                        )
                    })
                    .collect();
                let config = f.create_vector(&kvs);
                let args = fb::LoadWorkerArgs {
                    request_id: m.request_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    engine: engine_to_fb(m.engine),
                    package_dir: Some(f.create_string(&m.package_dir)),
                    library_path: Some(f.create_string(&m.library_path)),
                    entry_point: Some(f.create_string(&m.entry_point)),
                    free_result: Some(f.create_string(&m.free_result)),
                    topic: Some(f.create_string(&m.topic)),
                    config: Some(config),
                    max_concurrency: m.max_concurrency,
                    timeout_ms: m.timeout_ms,
                };
                let o = fb::LoadWorker::create(&mut f, &args);
                (fb::Payload::LoadWorker, o.as_union_value())
            }
            Message::LoadResult(m) => {
                let args = fb::LoadResultArgs {
                    request_id: m.request_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    ok: m.ok,
                    error: Some(f.create_string(&m.error)),
                };
                let o = fb::LoadResult::create(&mut f, &args);
                (fb::Payload::LoadResult, o.as_union_value())
            }
            Message::UnloadWorker(m) => {
                let args = fb::UnloadWorkerArgs {
                    request_id: m.request_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                };
                let o = fb::UnloadWorker::create(&mut f, &args);
                (fb::Payload::UnloadWorker, o.as_union_value())
            }
            Message::UnloadResult(m) => {
                let args = fb::UnloadResultArgs {
                    request_id: m.request_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    ok: m.ok,
                    error: Some(f.create_string(&m.error)),
                };
                let o = fb::UnloadResult::create(&mut f, &args);
                (fb::Payload::UnloadResult, o.as_union_value())
            }
            Message::Process(m) => {
                let args = fb::ProcessArgs {
                    msg_id: m.msg_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    event: Some(f.create_vector(&m.event)),
                };
                let o = fb::Process::create(&mut f, &args);
                (fb::Payload::Process, o.as_union_value())
            }
            Message::ProcessResult(m) => {
                let args = fb::ProcessResultArgs {
                    msg_id: m.msg_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    status: status_to_fb(m.status),
                    code: m.code,
                    response: Some(f.create_vector(&m.response)),
                    error: Some(f.create_string(&m.error)),
                    elapsed_ns: m.elapsed_ns,
                };
                let o = fb::ProcessResult::create(&mut f, &args);
                (fb::Payload::ProcessResult, o.as_union_value())
            }
            Message::Log(m) => {
                let args = fb::LogArgs {
                    worker_id: Some(f.create_string(&m.worker_id)),
                    msg_id: m.msg_id,
                    level: m.level,
                    message: Some(f.create_string(&m.message)),
                };
                let o = fb::Log::create(&mut f, &args);
                (fb::Payload::Log, o.as_union_value())
            }
            Message::GatewayCall(m) => {
                let args = fb::GatewayCallArgs {
                    call_id: m.call_id,
                    worker_id: Some(f.create_string(&m.worker_id)),
                    msg_id: m.msg_id,
                    service: Some(f.create_string(&m.service)),
                    method: Some(f.create_string(&m.method)),
                    payload: Some(f.create_vector(&m.payload)),
                };
                let o = fb::GatewayCall::create(&mut f, &args);
                (fb::Payload::GatewayCall, o.as_union_value())
            }
            Message::GatewayReply(m) => {
                let args = fb::GatewayReplyArgs {
                    call_id: m.call_id,
                    status: m.status,
                    payload: Some(f.create_vector(&m.payload)),
                    error: Some(f.create_string(&m.error)),
                };
                let o = fb::GatewayReply::create(&mut f, &args);
                (fb::Payload::GatewayReply, o.as_union_value())
            }
            Message::Ping { nonce } => {
                let o = fb::Ping::create(&mut f, &fb::PingArgs { nonce: *nonce });
                (fb::Payload::Ping, o.as_union_value())
            }
            Message::Pong { nonce } => {
                let o = fb::Pong::create(&mut f, &fb::PongArgs { nonce: *nonce });
                (fb::Payload::Pong, o.as_union_value())
            }
            Message::StatsRequest { request_id } => {
                let o = fb::StatsRequest::create(
                    &mut f,
                    &fb::StatsRequestArgs {
                        request_id: *request_id,
                    },
                );
                (fb::Payload::StatsRequest, o.as_union_value())
            }
            Message::Stats(m) => {
                let o = fb::Stats::create(
                    &mut f,
                    &fb::StatsArgs {
                        request_id: m.request_id,
                        rss_bytes: m.rss_bytes,
                        threads: m.threads,
                        in_flight: m.in_flight,
                        workers: m.workers,
                    },
                );
                (fb::Payload::Stats, o.as_union_value())
            }
            Message::Shutdown { deadline_ms } => {
                let o = fb::Shutdown::create(
                    &mut f,
                    &fb::ShutdownArgs {
                        deadline_ms: *deadline_ms,
                    },
                );
                (fb::Payload::Shutdown, o.as_union_value())
            }
        };
        let frame = fb::Frame::create(
            &mut f,
            &fb::FrameArgs {
                payload_type: ty,
                payload: Some(off),
            },
        );
        f.finish_minimal(frame);
        f.finished_data().to_vec()
    }

    /// Verifies, then copies out. `bytes` must already be a private copy (not shared memory).
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        let frame = flatbuffers::root::<fb::Frame>(bytes)?;
        let ty = frame.payload_type();
        let unknown = || ProtocolError::UnknownPayload(ty.0);
        Ok(match ty {
            fb::Payload::Ready => {
                let m = frame.payload_as_ready().ok_or_else(unknown)?;
                Message::Ready(Ready {
                    pid: m.pid(),
                    engine: engine_from_fb(m.engine()),
                    version: s(m.version()),
                    sandbox: s(m.sandbox()),
                })
            }
            fb::Payload::LoadWorker => {
                let m = frame.payload_as_load_worker().ok_or_else(unknown)?;
                Message::LoadWorker(LoadWorker {
                    request_id: m.request_id(),
                    worker_id: s(m.worker_id()),
                    engine: engine_from_fb(m.engine()),
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
                    event: b(m.event()),
                })
            }
            fb::Payload::ProcessResult => {
                let m = frame.payload_as_process_result().ok_or_else(unknown)?;
                Message::ProcessResult(ProcessResult {
                    msg_id: m.msg_id(),
                    worker_id: s(m.worker_id()),
                    status: status_from_fb(m.status()),
                    code: m.code(),
                    response: b(m.response()),
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
                    payload: b(m.payload()),
                })
            }
            fb::Payload::GatewayReply => {
                let m = frame.payload_as_gateway_reply().ok_or_else(unknown)?;
                Message::GatewayReply(GatewayReply {
                    call_id: m.call_id(),
                    status: m.status(),
                    payload: b(m.payload()),
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
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Ready(Ready {
                pid: 7,
                engine: EngineKind::Native,
                version: "0.1".into(),
                sandbox: "fds,seccomp".into(),
            }),
            Message::LoadWorker(LoadWorker {
                request_id: 1,
                worker_id: "w".into(),
                engine: EngineKind::DotNet,
                package_dir: "/p".into(),
                library_path: "lib.so".into(),
                entry_point: "E".into(),
                free_result: "F".into(),
                topic: "t".into(),
                config: vec![("a".into(), "b".into())],
                max_concurrency: 3,
                timeout_ms: 9,
            }),
            Message::ProcessResult(ProcessResult {
                msg_id: 4,
                worker_id: "w".into(),
                status: ResultStatus::InvalidResponse,
                code: -1,
                response: vec![1, 2],
                error: "e".into(),
                elapsed_ns: 5,
            }),
            Message::GatewayReply(GatewayReply {
                call_id: 2,
                status: 3,
                payload: vec![9],
                error: "x".into(),
            }),
            Message::Ping { nonce: 5 },
            Message::StatsRequest { request_id: 8 },
            Message::Shutdown { deadline_ms: 100 },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).expect("decodes"), m);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Message::decode(&[0xAB; 64]).is_err());
        assert!(Message::decode(&[]).is_err());
    }
}
