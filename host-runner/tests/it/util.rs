//! Fixture builds and small helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wm_shared::{CloudEvent, WorkerResponse};
use wm_testkit::native::{Build, Lang};
use workmanager_host_runner::engine::LoadSpec;
use workmanager_host_runner::ffi::callbacks::{GatewayFailure, HostServices};

/// The C fixture (tests/fixtures/native/worker.c) with the default exports.
pub fn worker_c() -> PathBuf {
    Build::plugin("worker", Lang::C, &["worker.c"]).build()
}

/// The C fixture built as `version` (same file name, same soname, different code).
pub fn worker_c_version(version: u32) -> PathBuf {
    let flags: &[&str] = match version {
        1 => &["-DVERSION=1"],
        2 => &["-DVERSION=2"],
        _ => panic!("fixture versions are 1 and 2"),
    };
    Build::plugin("worker", Lang::C, &["worker.c"])
        .flags(flags)
        .build()
}

/// The C fixture exporting `HandleEvent` / `Release` instead of `Process` / `FreeResult`.
pub fn worker_c_custom() -> PathBuf {
    Build::plugin("worker", Lang::C, &["worker.c"])
        .flags(&["-DENTRY=HandleEvent", "-DFREE=Release"])
        .build()
}

/// The C++ echo fixture (tests/fixtures/cpp/echo.cpp, flatc API).
pub fn echo_cpp() -> PathBuf {
    Build::plugin("echo", Lang::Cpp, &["echo.cpp"]).build()
}

/// A LoadSpec for the library at `so`.
pub fn spec(worker_id: &str, so: &Path) -> LoadSpec {
    LoadSpec {
        worker_id: worker_id.to_string(),
        package_dir: so.parent().expect("fixture dir").to_path_buf(),
        library_path: so
            .file_name()
            .expect("fixture file")
            .to_string_lossy()
            .into_owned(),
        entry_point: "Process".into(),
        free_result: "FreeResult".into(),
        topic: format!("topic.{worker_id}"),
        config: Vec::new(),
        max_concurrency: 1,
        timeout_ms: 2000,
    }
}

/// An encoded CloudEvent of type `ty` with `data` and a correlation id.
pub fn event(ty: &str, data: &[u8]) -> Vec<u8> {
    let mut e = CloudEvent::new("msg-1", ty, "urn:test");
    e.data = Some(data.to_vec());
    e.set_extension("correlationid", "corr-9")
        .expect("valid extension");
    e.to_flatbuffer()
}

/// Decodes a WorkerResponse the host accepted.
pub fn response(bytes: &[u8]) -> WorkerResponse {
    WorkerResponse::from_flatbuffer(bytes).expect("host-verified response decodes")
}

/// One forwarded log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub worker_id: String,
    pub msg_id: u64,
    pub level: i32,
    pub message: String,
}

/// How a [`Recorder`] answers gateway calls.
pub type GatewayFn = dyn Fn(&[u8]) -> Result<Vec<u8>, GatewayFailure> + Send + Sync;

/// What the in-process engine tests use in place of the ring: records logs, answers gateway
/// calls with `gateway`.
pub struct Recorder {
    pub logs: Mutex<Vec<LogLine>>,
    pub calls: Mutex<Vec<(String, String, Vec<u8>)>>,
    pub gateway: Box<GatewayFn>,
}

impl Recorder {
    pub fn new(
        gateway: impl Fn(&[u8]) -> Result<Vec<u8>, GatewayFailure> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Recorder {
            logs: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            gateway: Box::new(gateway),
        })
    }

    pub fn logs(&self) -> Vec<LogLine> {
        self.logs.lock().unwrap().clone()
    }
}

impl HostServices for Recorder {
    fn log(&self, worker_id: &str, msg_id: u64, level: i32, message: &str) {
        self.logs.lock().unwrap().push(LogLine {
            worker_id: worker_id.into(),
            msg_id,
            level,
            message: message.into(),
        });
    }

    fn gateway_call(
        &self,
        _worker_id: &str,
        _msg_id: u64,
        service: &str,
        method: &str,
        payload: &[u8],
        _timeout: Duration,
    ) -> Result<Vec<u8>, GatewayFailure> {
        self.calls
            .lock()
            .unwrap()
            .push((service.into(), method.into(), payload.to_vec()));
        (self.gateway)(payload)
    }
}
