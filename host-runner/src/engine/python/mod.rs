//! PythonEngine: `text/x-python` workers (a source file with a module-level `Process(event)`)
//! run by CPython embedded in the host through pyo3 (the system libpython 3.11).
//!
//! Why embedded and not the original's `python3` subprocess per worker with JSON over a Unix
//! socket: the event crosses the ring once, like a native one, with no second process, socket,
//! or JSON framing per message, and the interpreter is under the host's sandbox, crash handler
//! and limits (docs/python.md has the figures).
//!
//! - The interpreter starts on the first load (as CoreCLR does in the .NET engine): no `site`
//!   module (no machine site-packages, no `.pth` code), environment ignored, no bytecode
//!   written, no signal handlers (the host's crash handler stays in place). It cannot be
//!   restarted: one interpreter per host process, recycled by restarting the process.
//! - `bootstrap.py` (module `_virtufin_host`) does the per-worker work in Python: it runs the
//!   source in a fresh module, turns the CloudEvent's fields into the event dict and the reply
//!   dict back into fields, awaits `async def Process`, formats tracebacks, and installs the
//!   import policy (`PYTHON_BLOCKED_MODULES`, passed as `--python-blocked-modules`).
//! - `virtufin.py` (module `virtufin`) is the worker's API (`log`, `gateway_call`) over the
//!   native functions of [`native`], which reach the ring through [`HostServices`].
//!
//! Calls hold the GIL: a worker's `maxConcurrency` > 1 overlaps only where its code releases
//! the GIL (waiting in `gateway_call`, `time.sleep`, C extensions that release it).

mod native;
mod reply;
mod thread_state;

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use reply::{Reply, reply};
use wm_shared::{CloudEvent, WorkerResponse};

use super::{Engine, LoadSpec, ProcessOutcome, ResultStatus};
use crate::ffi::callbacks::HostServices;

/// The source file of a `text/x-python` package (and of a wheel's worker).
pub const WORKER_FILE: &str = "worker.py";

/// Largest worker source accepted (bytes).
pub const MAX_SOURCE_BYTES: u64 = 16 * 1024 * 1024;

const BOOTSTRAP: &str = include_str!("bootstrap.py");
const VIRTUFIN: &str = include_str!("virtufin.py");

/// What the engine needs from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonConfig {
    /// Modules worker code may not import (`PYTHON_BLOCKED_MODULES`).
    pub blocked_modules: Vec<String>,
}

/// Errors of the Python engine; each names the worker and the step.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("the Python interpreter could not start: {0}")]
    Interpreter(String),
    #[error(
        "worker {worker}: source path {path:?} is not a relative path inside the package ({reason})"
    )]
    SourcePath {
        worker: String,
        path: String,
        reason: &'static str,
    },
    #[error("worker {worker}: cannot read {}: {source}", path.display())]
    Read {
        worker: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker}: {} is {size} bytes, over the {MAX_SOURCE_BYTES}-byte limit", path.display())]
    TooLarge {
        worker: String,
        path: PathBuf,
        size: u64,
    },
    #[error("worker {worker}: {} is not UTF-8 text", path.display())]
    NotUtf8 { worker: String, path: PathBuf },
    /// The module raised while it was imported (or has no `Process`): the traceback.
    #[error("worker {worker}: loading the module failed:\n{traceback}")]
    Module { worker: String, traceback: String },
}

/// The interpreter's entry points into `_virtufin_host`.
struct Runtime {
    load: Py<PyAny>,
    process: Py<PyAny>,
    unload: Py<PyAny>,
}

/// The Python engine.
pub struct PythonEngine {
    services: Arc<dyn HostServices>,
    max_response: usize,
    config: PythonConfig,
    runtime: OnceLock<Result<Runtime, String>>,
}

/// A loaded Python worker: its module's `Process`.
pub struct PythonWorker {
    ctx: Arc<native::CallContext>,
    module: String,
    process: Py<PyAny>,
    is_async: bool,
}

impl PythonEngine {
    pub fn new(config: PythonConfig, services: Arc<dyn HostServices>, max_response: usize) -> Self {
        PythonEngine {
            services,
            max_response,
            config,
            runtime: OnceLock::new(),
        }
    }

    fn runtime(&self) -> Result<&Runtime, PythonError> {
        self.runtime
            .get_or_init(|| start_interpreter(&self.config).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| PythonError::Interpreter(e.clone()))
    }
}

/// Starts CPython (once per process) and loads the host's modules.
fn start_interpreter(config: &PythonConfig) -> Result<Runtime, String> {
    // SAFETY: these legacy configuration globals are read by Py_InitializeEx; they are written
    // before the interpreter starts, from the one thread that starts it (inside a OnceLock).
    // Deprecated from 3.12 (PyConfig replaces them); this engine links 3.11, where they work.
    #[allow(deprecated)]
    unsafe {
        pyo3::ffi::Py_NoSiteFlag = 1;
        pyo3::ffi::Py_IgnoreEnvironmentFlag = 1;
        pyo3::ffi::Py_DontWriteBytecodeFlag = 1;
    }
    // Py_InitializeEx(0): no signal handlers.
    Python::initialize();
    Python::attach(|py| -> PyResult<Runtime> {
        let modules = py.import("sys")?.getattr("modules")?;
        modules.set_item("_virtufin_native", native::module(py)?)?;
        let virtufin = code_module(py, VIRTUFIN, "virtufin")?;
        modules.set_item("virtufin", virtufin)?;
        let host = code_module(py, BOOTSTRAP, "_virtufin_host")?;
        let blocked = PyList::new(py, &config.blocked_modules)?;
        host.getattr("configure")?.call1((blocked,))?;
        Ok(Runtime {
            load: host.getattr("load")?.unbind(),
            process: host.getattr("process")?.unbind(),
            unload: host.getattr("unload")?.unbind(),
        })
    })
    .map_err(|e| Python::attach(|py| describe(py, &e)))
}

fn code_module<'py>(
    py: Python<'py>,
    source: &str,
    name: &str,
) -> PyResult<Bound<'py, pyo3::types::PyModule>> {
    let nul = |e: std::ffi::NulError| pyo3::exceptions::PyValueError::new_err(e.to_string());
    let code = CString::new(source).map_err(nul)?;
    let file = CString::new(format!("<host-runner>/{name}.py")).map_err(nul)?;
    let module = CString::new(name).map_err(nul)?;
    pyo3::types::PyModule::from_code(py, &code, &file, &module)
}

/// An exception as `Type: message` plus its traceback, for errors outside worker code.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let tb = e
        .traceback(py)
        .and_then(|t| t.format().ok())
        .unwrap_or_default();
    format!("{tb}{e}")
}

/// `<package_dir>/<relative>`, refusing anything that could leave the package.
fn source_path(spec: &LoadSpec) -> Result<PathBuf, PythonError> {
    let rel = if spec.library_path.is_empty() {
        WORKER_FILE
    } else {
        spec.library_path.as_str()
    };
    let bad = |reason| PythonError::SourcePath {
        worker: spec.worker_id.clone(),
        path: rel.to_string(),
        reason,
    };
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(bad("absolute"));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("'..' or '.' component"));
    }
    let full = spec.package_dir.join(p);
    let meta = std::fs::symlink_metadata(&full).map_err(|source| PythonError::Read {
        worker: spec.worker_id.clone(),
        path: full.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file"));
    }
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(PythonError::TooLarge {
            worker: spec.worker_id.clone(),
            path: full,
            size: meta.len(),
        });
    }
    Ok(full)
}

impl Engine for PythonEngine {
    type Worker = PythonWorker;
    type Error = PythonError;

    fn load(&self, spec: &LoadSpec) -> Result<PythonWorker, PythonError> {
        let path = source_path(spec)?;
        let bytes = std::fs::read(&path).map_err(|source| PythonError::Read {
            worker: spec.worker_id.clone(),
            path: path.clone(),
            source,
        })?;
        let source = String::from_utf8(bytes).map_err(|_| PythonError::NotUtf8 {
            worker: spec.worker_id.clone(),
            path: path.clone(),
        })?;
        let rt = self.runtime()?;
        let ctx = Arc::new(native::CallContext {
            worker_id: spec.worker_id.clone(),
            timeout: Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
            services: self.services.clone(),
        });
        // The package folder is on sys.path for a wheel's vendored modules (the folder holds
        // only the package's own files), then the dependencies the supervisor installed.
        let mut extra: Vec<String> = Vec::new();
        let deps = wm_shared::package::python_wheel::deps_dir(&spec.package_dir);
        if deps.is_dir() {
            extra.push(deps.to_string_lossy().into_owned());
        }
        extra.push(spec.package_dir.to_string_lossy().into_owned());
        let _current = native::enter(&ctx, 0);
        Python::attach(|py| {
            let out = rt
                .load
                .call1(
                    py,
                    (
                        &spec.worker_id,
                        source,
                        path.to_string_lossy().into_owned(),
                        extra,
                    ),
                )
                .map_err(|e| describe(py, &e))?;
            let t = out.bind(py).cast::<PyTuple>().map_err(|e| e.to_string())?;
            let tag: String = t
                .get_item(0)
                .and_then(|v| v.extract())
                .map_err(|e| e.to_string())?;
            if tag == "ok" {
                let get = |i| t.get_item(i).map_err(|e| e.to_string());
                Ok(PythonWorker {
                    ctx: ctx.clone(),
                    module: get(1)?.extract::<String>().map_err(|e| e.to_string())?,
                    process: get(2)?.unbind(),
                    is_async: get(3)?.extract::<bool>().map_err(|e| e.to_string())?,
                })
            } else {
                Err(t
                    .get_item(1)
                    .and_then(|v| v.extract::<String>())
                    .unwrap_or_else(|e| e.to_string()))
            }
        })
        .map_err(|traceback| PythonError::Module {
            worker: spec.worker_id.clone(),
            traceback,
        })
    }

    fn process(&self, worker: &PythonWorker, msg_id: u64, event: &[u8]) -> ProcessOutcome {
        let start = Instant::now();
        let mut outcome = match CloudEvent::from_flatbuffer(event) {
            Ok(ev) => match self.runtime() {
                Ok(rt) => {
                    thread_state::keep();
                    let _current = native::enter(&worker.ctx, msg_id);
                    Python::attach(|py| self.call(py, rt, worker, &ev))
                }
                Err(e) => ProcessOutcome::failed(ResultStatus::ProcessFailed, e.to_string()),
            },
            Err(e) => ProcessOutcome::failed(
                ResultStatus::ProcessFailed,
                format!("the event is not a valid CloudEvent FlatBuffer: {e}"),
            ),
        };
        outcome.elapsed_ns = start.elapsed().as_nanos() as u64;
        outcome
    }

    fn unload(&self, worker: PythonWorker) -> Result<(), PythonError> {
        let rt = self.runtime()?;
        Python::attach(|py| {
            if let Err(e) = rt.unload.call1(py, (&worker.module,)) {
                crate::sandbox::log(&format!(
                    "worker {}: unloading module {} failed: {}",
                    worker.ctx.worker_id,
                    worker.module,
                    describe(py, &e)
                ));
            }
            // The module's objects go with the last reference, under the GIL.
            drop(worker);
        });
        Ok(())
    }
}

/// The event dict without `data` (which `_virtufin_host.process` adds): the attributes that
/// are set, then the extensions, keys interned once per interpreter (`intern!`) rather than
/// made per call.
fn event_dict<'py>(py: Python<'py>, ev: &CloudEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "id"), ev.id.as_str())?;
    d.set_item(intern!(py, "type"), ev.ty.as_str())?;
    d.set_item(intern!(py, "source"), ev.source.as_str())?;
    d.set_item(intern!(py, "specversion"), ev.specversion.as_str())?;
    let optional = [
        (intern!(py, "datacontenttype"), &ev.datacontenttype),
        (intern!(py, "dataschema"), &ev.dataschema),
        (intern!(py, "subject"), &ev.subject),
        (intern!(py, "time"), &ev.time),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            d.set_item(k, v.as_str())?;
        }
    }
    for (k, v) in ev.extensions() {
        // An extension never replaces an attribute (the CloudEvent type keeps them apart).
        if !d.contains(k.as_str())? {
            d.set_item(k.as_str(), v.as_str())?;
        }
    }
    Ok(d)
}

impl PythonEngine {
    fn call(
        &self,
        py: Python<'_>,
        rt: &Runtime,
        w: &PythonWorker,
        ev: &CloudEvent,
    ) -> ProcessOutcome {
        let event = match event_dict(py, ev) {
            Ok(d) => d,
            Err(e) => {
                return ProcessOutcome::failed(ResultStatus::WorkerException, describe(py, &e));
            }
        };
        let data = ev.data.as_deref().map(|d| PyBytes::new(py, d));
        let args = (
            w.process.clone_ref(py),
            w.is_async,
            w.ctx.worker_id.as_str(),
            event,
            ev.datacontenttype.as_deref(),
            data,
        );
        let out = match rt.process.call1(py, args) {
            Ok(o) => o,
            // process() catches everything the worker raises; this is the host's own failure.
            Err(e) => {
                return ProcessOutcome::failed(ResultStatus::WorkerException, describe(py, &e));
            }
        };
        match reply(py, out.bind(py)) {
            Ok(Reply::None) => ProcessOutcome::failed(ResultStatus::NoReply, ""),
            Ok(Reply::Error(tb)) => ProcessOutcome::failed(ResultStatus::WorkerException, tb),
            Ok(Reply::Event(ev)) => {
                if let Err(e) = ev.validate() {
                    return ProcessOutcome::failed(
                        ResultStatus::InvalidResponse,
                        format!("the returned dict is not a valid CloudEvent: {e}"),
                    );
                }
                let bytes = WorkerResponse {
                    result_event: Some(*ev),
                    error_message: None,
                }
                .to_flatbuffer();
                if bytes.len() > self.max_response {
                    return ProcessOutcome::failed(
                        ResultStatus::InvalidResponse,
                        format!(
                            "the reply is {} bytes, over the ring's limit of {} bytes",
                            bytes.len(),
                            self.max_response
                        ),
                    );
                }
                ProcessOutcome {
                    status: ResultStatus::Ok,
                    code: 0,
                    response: bytes,
                    error: String::new(),
                    elapsed_ns: 0,
                }
            }
            Err(e) => ProcessOutcome::failed(ResultStatus::InvalidResponse, e),
        }
    }
}
