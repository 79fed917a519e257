//! The .NET engine: CoreCLR inside the host-runner, running `Virtufin.Worker.DevKit.IWorker`
//! assemblies (the original's `DotNetDllEngine`).
//!
//! # How it fits together
//! - CoreCLR starts lazily, on the first [`DotNetEngine::load`] (or [`DotNetEngine::start`]):
//!   [`wm_shared::dotnet`] finds `libhostfxr.so`, hostfxr initialises the runtime from the
//!   bridge's runtimeconfig (`rollForward: Major`, invariant globalization), and
//!   `load_assembly_and_get_function_pointer` hands us the bridge's static entry points
//!   (`ComponentEntryPoint` signature: 3.1 has no `UnmanagedCallersOnly`).
//! - The bridge (`host-runner/dotnet/bridge/Bridge.cs`, built by `host-runner/dotnet/build.sh`
//!   into `<dir of the host-runner binary>/dotnet/`) loads each worker into its own collectible
//!   `WorkerLoadContext`, keeps one instance per worker, and turns a FlatBuffer CloudEvent into a
//!   FlatBuffer WorkerResponse with no JSON detour.
//! - Every call passes a pointer to a [`CallCtx`] on the caller's stack. The bridge gives it
//!   back to our `extern "C"` callbacks: `deliver` (the reply bytes or an error text), `log` and
//!   `gateway_call` (the worker's `WorkerContext`, forwarded to [`HostServices`] as the same Log and
//!   GatewayCall frames native workers produce). The bridge stops using the pointer before the
//!   entry point returns (`WorkerHost.Exit` waits for callbacks in flight), which is what makes
//!   the borrow sound.
//!
//! CoreCLR can be started once per process and never unloaded: the runtime lives in a
//! process-wide `OnceLock`, and its first configuration wins. A start failure is remembered and
//! returned to every later load (hostfxr cannot be retried in the same process); the supervisor
//! recycles the host process to try again.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wm_shared::sync::Locked as _;

use netcorehost::hostfxr::Hostfxr;
use netcorehost::pdcstring::PdCString;
use wm_shared::dotnet::{DotNetDiscoveryError, DotNetRuntime, RuntimeSearch};

use super::{Engine, LoadSpec, ProcessOutcome, ResultStatus};
use crate::ffi::callbacks::{GW_TIMEOUT, GW_UNAVAILABLE, GatewayFailure, HostServices};

/// File name (without `.dll`) of the bridge assembly.
pub const BRIDGE_ASSEMBLY: &str = "Virtufin.WorkManager.Engine.DotNetDll.Bridge";
/// Assembly-qualified name of the bridge's entry-point class.
const BRIDGE_TYPE: &str =
    "Virtufin.WorkManager.Engine.DotNetDll.Bridge, Virtufin.WorkManager.Engine.DotNetDll.Bridge";
/// Directory next to the host-runner binary holding the bridge and the DevKit.
pub const ENGINE_DIR: &str = "dotnet";

/// Environment CoreCLR must see before it starts (3.1 reads only the `COMPlus_` names, newer
/// runtimes also the `DOTNET_` ones): no diagnostics IPC socket or FIFOs in /tmp, no ICU, and
/// a 4 MiB gen0 budget. The default budget follows the L3 cache size and let a busy host grow
/// to ~110 MiB RSS after 100k messages; 4 MiB keeps it near 35 MiB with the same throughput
/// (docs/benchmarks.md). The supervisor passes these to every host; a host-runner started by
/// hand gets them from `main`, which sets them before any thread exists.
pub const RUNTIME_ENV: &[(&str, &str)] = &[
    ("COMPlus_EnableDiagnostics", "0"),
    ("DOTNET_EnableDiagnostics", "0"),
    ("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1"),
    ("COMPlus_GCgen0size", "0x400000"),
    ("DOTNET_GCgen0size", "0x400000"),
];

// Bridge status codes (Bridge.cs).
const ST_OK: i32 = 0;
const ST_NO_REPLY: i32 = 1;
const ST_FAILED: i32 = 2;
const ST_WORKER_EXCEPTION: i32 = 4;
const ST_UNKNOWN_WORKER: i32 = 5;
// What a deliver callback carries (Bridge.cs).
const KIND_RESPONSE: i32 = 0;
const KIND_TEXT: i32 = 1;

/// `public delegate int ComponentEntryPoint(IntPtr args, int sizeBytes)`.
type EntryPoint = unsafe extern "system" fn(*const c_void, i32) -> i32;

// Argument structs of the bridge's entry points: every field 8 bytes, same order as the
// `[StructLayout(LayoutKind.Sequential)]` structs in Bridge.cs, which check the size.
#[repr(C)]
struct InitArgs {
    log: *const c_void,
    gateway: *const c_void,
    free: *const c_void,
    deliver: *const c_void,
}

#[repr(C)]
struct LoadArgs {
    ctx: *const c_void,
    worker_id: *const u8,
    worker_id_len: i64,
    dll_path: *const u8,
    dll_path_len: i64,
    package_dir: *const u8,
    package_dir_len: i64,
    /// `LOAD_VALIDATE_ONLY`: compile (C# source) / load and find the entry, create nothing.
    flags: i64,
    handle: i64,
    /// The worker's topic (`VIRTUFIN_WORKER_TOPIC` while it loads).
    topic: *const u8,
    topic_len: i64,
}

/// Load flag (Bridge.cs `LoadFlagValidateOnly`).
const LOAD_VALIDATE_ONLY: i64 = 1;

#[repr(C)]
struct ProcessArgs {
    ctx: *const c_void,
    handle: i64,
    input: *const u8,
    input_len: i64,
}

#[repr(C)]
struct HandleArgs {
    handle: i64,
    value: i64,
}

/// Where the engine finds its pieces.
#[derive(Debug, Clone)]
pub struct DotNetConfig {
    /// Holds the bridge dll, its runtimeconfig and `Virtufin.Worker.DevKit.dll`.
    pub engine_dir: PathBuf,
    /// Where to look for the runtime.
    pub search: RuntimeSearch,
}

impl DotNetConfig {
    /// `<dir of this executable>/dotnet` and the default runtime search.
    pub fn from_env() -> DotNetConfig {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        DotNetConfig {
            engine_dir: exe_dir.join(ENGINE_DIR),
            search: RuntimeSearch::from_env(),
        }
    }

    /// The bridge assembly.
    pub fn bridge_path(&self) -> PathBuf {
        self.engine_dir.join(format!("{BRIDGE_ASSEMBLY}.dll"))
    }

    /// The bridge's runtimeconfig.
    pub fn runtime_config_path(&self) -> PathBuf {
        self.engine_dir
            .join(format!("{BRIDGE_ASSEMBLY}.runtimeconfig.json"))
    }
}

/// Why CoreCLR or the bridge did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable runtime on disk (the message lists every path searched).
    #[error(transparent)]
    NoRuntime(#[from] DotNetDiscoveryError),
    /// The bridge was not built next to the binary.
    #[error(
        "the .NET engine bridge {} is missing: build it with `host-runner/dotnet/build.sh {}`",
        path.display(), dir.display()
    )]
    BridgeMissing { path: PathBuf, dir: PathBuf },
    /// `dlopen` of hostfxr failed.
    #[error("cannot load hostfxr from {}", path.display())]
    LoadHostfxr {
        path: PathBuf,
        #[source]
        source: netcorehost::dlopen2::Error,
    },
    /// hostfxr refused the runtimeconfig or the runtime did not start.
    #[error(
        "hostfxr could not start the .NET runtime in {} for {}",
        root.display(), config.display()
    )]
    Initialize {
        root: PathBuf,
        config: PathBuf,
        #[source]
        source: netcorehost::error::HostingError,
    },
    /// A bridge entry point could not be resolved.
    #[error("cannot get the bridge entry point {method} from {}", path.display())]
    EntryPoint {
        method: &'static str,
        path: PathBuf,
        #[source]
        source: netcorehost::hostfxr::GetManagedFunctionError,
    },
    /// The bridge's Init returned non-zero.
    #[error(
        "the .NET engine bridge refused to start (status {0}): rebuild it with host-runner/dotnet/build.sh"
    )]
    Init(i32),
    /// A path or name cannot be passed to hostfxr.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul { what: &'static str, value: String },
}

/// Errors of [`DotNetEngine`].
#[derive(Debug, thiserror::Error)]
pub enum DotNetError {
    /// CoreCLR or the bridge could not be started (now or at an earlier attempt).
    #[error("cannot start the .NET runtime")]
    Start(#[source] Arc<StartError>),
    /// The worker assembly could not be loaded; `message` is the bridge's text (every loader
    /// error, or the missing-IWorker message).
    #[error("worker {worker_id}: {message}")]
    Load { worker_id: String, message: String },
    /// An entry point returned an unexpected status.
    #[error("worker {worker_id}: the .NET engine bridge failed to {step} (status {status})")]
    Bridge {
        worker_id: String,
        step: &'static str,
        status: i32,
    },
    /// The bridge does not know the worker (already unloaded).
    #[error("worker {worker_id} is not loaded in the .NET engine")]
    UnknownWorker { worker_id: String },
}

/// The outcome of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A WorkerResponse that passed the FlatBuffers verifier.
    Reply(Vec<u8>),
    /// The worker returned null.
    NoReply,
    /// The worker threw; the exception text.
    WorkerException(String),
    /// The bridge produced bytes that are not a WorkerResponse (a bug, reported, never trusted).
    InvalidResponse(String),
    /// The call could not be made (bad input FlatBuffer, bridge failure); what happened.
    Failed(String),
    /// No such worker is loaded.
    UnknownWorker,
}

/// A loaded managed worker. Dropping it without [`DotNetEngine::unload`] unloads it too.
#[derive(Debug)]
pub struct DotNetWorker {
    worker_id: String,
    handle: i64,
    gateway_timeout: Duration,
}

impl DotNetWorker {
    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
}

impl Drop for DotNetWorker {
    fn drop(&mut self) {
        if self.handle != 0
            && let Some(Ok(b)) = BRIDGE.get()
        {
            // Nothing to report to: the worker is gone either way.
            let _ = b.unload(self.handle);
        }
    }
}

/// The bridge's entry points, resolved once per process.
struct Bridge {
    load: EntryPoint,
    process: EntryPoint,
    unload: EntryPoint,
    collect: EntryPoint,
    runtime: DotNetRuntime,
    cold_start: Duration,
}

static BRIDGE: OnceLock<Result<Bridge, Arc<StartError>>> = OnceLock::new();

/// Runs a managed entry point.
///
/// # Safety
/// `f` must be a bridge entry point whose argument struct is `T` (Bridge.cs checks the size),
/// and every pointer inside `args` must be valid for the duration of the call.
unsafe fn call<T>(f: EntryPoint, args: &mut T) -> i32 {
    let size = i32::try_from(std::mem::size_of::<T>()).unwrap_or(i32::MAX);
    // SAFETY: per this function's contract `f` expects a `T` of `size` bytes; `args` is a live
    // exclusive borrow, so the pointer is valid and writable for the whole call.
    unsafe { f(std::ptr::from_mut(args).cast::<c_void>(), size) }
}

impl Bridge {
    fn unload(&self, handle: i64) -> i32 {
        let mut a = HandleArgs { handle, value: 0 };
        // SAFETY: `unload` is the bridge's Unload entry point, which takes HandleArgs; `a` holds
        // no pointers.
        unsafe { call(self.unload, &mut a) }
    }
}

fn pd(what: &'static str, s: &str) -> Result<PdCString, StartError> {
    PdCString::from_str(s).map_err(|_| StartError::Nul {
        what,
        value: s.to_string(),
    })
}

fn pd_path(what: &'static str, p: &Path) -> Result<PdCString, StartError> {
    PdCString::from_os_str(p).map_err(|_| StartError::Nul {
        what,
        value: p.display().to_string(),
    })
}

fn start(config: &DotNetConfig) -> Result<Bridge, StartError> {
    let t0 = Instant::now();
    let runtime = config.search.find()?;
    let asm = config.bridge_path();
    let rc = config.runtime_config_path();
    for p in [&asm, &rc] {
        if !p.is_file() {
            return Err(StartError::BridgeMissing {
                path: p.clone(),
                dir: config.engine_dir.clone(),
            });
        }
    }
    let hostfxr =
        Hostfxr::load_from_path(&runtime.hostfxr).map_err(|source| StartError::LoadHostfxr {
            path: runtime.hostfxr.clone(),
            source,
        })?;
    let init_err = |source| StartError::Initialize {
        root: runtime.root.clone(),
        config: rc.clone(),
        source,
    };
    let ctx = hostfxr
        .initialize_for_runtime_config_with_dotnet_root(
            pd_path("the runtimeconfig path", &rc)?,
            pd_path("the .NET root", &runtime.root)?,
        )
        .map_err(init_err)?;
    let loader = ctx
        .get_delegate_loader_for_assembly(pd_path("the bridge path", &asm)?)
        .map_err(init_err)?;
    let ty = pd("the bridge type", BRIDGE_TYPE)?;
    let get = |method: &'static str| -> Result<EntryPoint, StartError> {
        let f = loader
            .get_function_with_default_signature(&ty, &pd("a method name", method)?)
            .map_err(|source| StartError::EntryPoint {
                method,
                path: asm.clone(),
                source,
            })?;
        Ok(*f)
    };
    let init = get("Init")?;
    let bridge = Bridge {
        load: get("Load")?,
        process: get("Process")?,
        unload: get("Unload")?,
        collect: get("Collect")?,
        runtime,
        cold_start: Duration::ZERO,
    };
    let mut args = InitArgs {
        log: cb_log as *const c_void,
        gateway: cb_gateway as *const c_void,
        free: cb_free as *const c_void,
        deliver: cb_deliver as *const c_void,
    };
    // SAFETY: `init` is the bridge's Init entry point, which takes InitArgs; the four pointers
    // are `extern "C"` functions with the signatures of the delegates in Bridge.cs and
    // WorkerContext.cs, valid for the life of the process.
    let st = unsafe { call(init, &mut args) };
    if st != ST_OK {
        return Err(StartError::Init(st));
    }
    // CoreCLR cannot be shut down or restarted: keep hostfxr, its context and the loader alive
    // for the rest of the process instead of closing them under a running runtime.
    std::mem::forget(loader);
    std::mem::forget(ctx);
    std::mem::forget(hostfxr);
    Ok(Bridge {
        cold_start: t0.elapsed(),
        ..bridge
    })
}

/// Passed (as a pointer) with every load and process call, and handed back by the bridge to
/// the callbacks. Lives on the caller's stack for exactly one entry-point call.
struct CallCtx<'a> {
    worker_id: &'a str,
    msg_id: u64,
    services: &'a dyn HostServices,
    gateway_timeout: Duration,
    /// What `deliver` handed over: (kind, bytes). Callbacks may come from other threads.
    delivered: Mutex<Option<(i32, Vec<u8>)>>,
}

impl CallCtx<'_> {
    fn take(&self) -> Option<(i32, Vec<u8>)> {
        self.delivered.locked().take()
    }

    fn text(&self) -> String {
        match self.take() {
            Some((KIND_TEXT, b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(_) => "the .NET bridge delivered a reply where a message was expected".to_string(),
            None => "the .NET bridge gave no reason".to_string(),
        }
    }
}

/// The engine. Cheap to create; the runtime behind it is process-wide.
pub struct DotNetEngine {
    config: DotNetConfig,
    services: Arc<dyn HostServices>,
    /// Largest reply accepted (the ring's frame limit less the envelope).
    max_response: usize,
}

impl DotNetEngine {
    /// An engine that starts CoreCLR on its first load; replies over `max_response` bytes are
    /// refused as invalid.
    pub fn new(
        config: DotNetConfig,
        services: Arc<dyn HostServices>,
        max_response: usize,
    ) -> DotNetEngine {
        DotNetEngine {
            config,
            services,
            max_response,
        }
    }

    /// Starts CoreCLR and the bridge now if nobody has yet; returns the runtime in use and the
    /// time the first start took (hostfxr load to the first managed call returning).
    pub fn start(&self) -> Result<(DotNetRuntime, Duration), DotNetError> {
        let b = self.bridge()?;
        Ok((b.runtime.clone(), b.cold_start))
    }

    /// True once CoreCLR runs in this process.
    pub fn runtime_started() -> bool {
        matches!(BRIDGE.get(), Some(Ok(_)))
    }

    fn bridge(&self) -> Result<&'static Bridge, DotNetError> {
        BRIDGE
            .get_or_init(|| start(&self.config).map_err(Arc::new))
            .as_ref()
            .map_err(|e| DotNetError::Start(Arc::clone(e)))
    }

    /// Loads `library_path` (relative to `package_dir`, or absolute) into a new collectible
    /// context and creates the worker's instance. `gateway_timeout` bounds its gateway calls.
    pub fn load(
        &self,
        worker_id: &str,
        package_dir: &Path,
        library_path: &str,
        gateway_timeout: Duration,
    ) -> Result<DotNetWorker, DotNetError> {
        self.load_with(
            worker_id,
            package_dir,
            library_path,
            "",
            gateway_timeout,
            false,
        )
    }

    /// [`DotNetEngine::load`] with the worker's `topic`: the bridge sets `VIRTUFIN_WORKER_ID`
    /// and `VIRTUFIN_WORKER_TOPIC` in the managed environment while the worker's constructors
    /// run (CoreCLR keeps its own copy of the environment: a native setenv does not reach it).
    pub fn load_with_topic(
        &self,
        worker_id: &str,
        package_dir: &Path,
        library_path: &str,
        topic: &str,
        gateway_timeout: Duration,
    ) -> Result<DotNetWorker, DotNetError> {
        self.load_with(
            worker_id,
            package_dir,
            library_path,
            topic,
            gateway_timeout,
            false,
        )
    }

    /// As [`DotNetEngine::load_with_topic`]; with `validate_only` the bridge compiles (C#
    /// source) and loads the assembly and finds its entry but creates no instance: the
    /// supervisor's check of new C# source, which runs no worker code. The returned worker only
    /// unloads.
    pub fn load_with(
        &self,
        worker_id: &str,
        package_dir: &Path,
        library_path: &str,
        topic: &str,
        gateway_timeout: Duration,
        validate_only: bool,
    ) -> Result<DotNetWorker, DotNetError> {
        let b = self.bridge()?;
        let ctx = CallCtx {
            worker_id,
            msg_id: 0,
            services: &*self.services,
            gateway_timeout,
            delivered: Mutex::new(None),
        };
        let dir = package_dir.as_os_str().as_encoded_bytes();
        let mut a = LoadArgs {
            ctx: std::ptr::from_ref(&ctx).cast::<c_void>(),
            worker_id: worker_id.as_ptr(),
            worker_id_len: len_i64(worker_id.len()),
            dll_path: library_path.as_ptr(),
            dll_path_len: len_i64(library_path.len()),
            package_dir: dir.as_ptr(),
            package_dir_len: len_i64(dir.len()),
            flags: if validate_only { LOAD_VALIDATE_ONLY } else { 0 },
            handle: 0,
            topic: topic.as_ptr(),
            topic_len: len_i64(topic.len()),
        };
        // SAFETY: `load` is the bridge's Load entry point, which takes LoadArgs. The four
        // strings are borrowed for the call with their exact lengths; `ctx` outlives the call
        // and the bridge uses it only during the call (WorkerHost.Exit waits for callbacks).
        let st = unsafe { call(b.load, &mut a) };
        match st {
            ST_OK if a.handle > 0 => Ok(DotNetWorker {
                worker_id: worker_id.to_string(),
                handle: a.handle,
                gateway_timeout,
            }),
            ST_FAILED => Err(DotNetError::Load {
                worker_id: worker_id.to_string(),
                message: ctx.text(),
            }),
            status => Err(DotNetError::Bridge {
                worker_id: worker_id.to_string(),
                step: "load the worker",
                status,
            }),
        }
    }

    /// Runs one message (`event` = a worker_api.fbs CloudEvent) on the calling thread.
    pub fn process(&self, worker: &DotNetWorker, msg_id: u64, event: &[u8]) -> Outcome {
        let b = match self.bridge() {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let ctx = CallCtx {
            worker_id: &worker.worker_id,
            msg_id,
            services: &*self.services,
            gateway_timeout: worker.gateway_timeout,
            delivered: Mutex::new(None),
        };
        let mut a = ProcessArgs {
            ctx: std::ptr::from_ref(&ctx).cast::<c_void>(),
            handle: worker.handle,
            input: event.as_ptr(),
            input_len: len_i64(event.len()),
        };
        // SAFETY: `process` is the bridge's Process entry point, which takes ProcessArgs;
        // `event` is borrowed for the call with its length; `ctx` outlives the call and the
        // bridge stops using it before returning (WorkerHost.Exit).
        let st = unsafe { call(b.process, &mut a) };
        match st {
            ST_OK => match ctx.take() {
                Some((KIND_RESPONSE, bytes)) if bytes.len() > self.max_response => {
                    Outcome::InvalidResponse(format!(
                        "the reply of {} bytes exceeds the {}-byte limit of a frame; raise the ring's max_frame or send less",
                        bytes.len(),
                        self.max_response
                    ))
                }
                Some((KIND_RESPONSE, bytes)) => {
                    match wm_shared::protocol::hot::verify_worker_response(&bytes) {
                        Ok(_) => Outcome::Reply(bytes),
                        Err(e) => Outcome::InvalidResponse(format!(
                            "the .NET bridge returned an invalid WorkerResponse: {e}"
                        )),
                    }
                }
                _ => Outcome::InvalidResponse(
                    "the .NET bridge reported a reply but delivered none".to_string(),
                ),
            },
            ST_NO_REPLY => Outcome::NoReply,
            ST_WORKER_EXCEPTION => Outcome::WorkerException(ctx.text()),
            ST_UNKNOWN_WORKER => Outcome::UnknownWorker,
            ST_FAILED => Outcome::Failed(ctx.text()),
            status => Outcome::Failed(format!(
                "the .NET engine bridge rejected the call (status {status})"
            )),
        }
    }

    /// Drops the worker's instance and unloads its context; the memory comes back when a GC
    /// collects it ([`DotNetEngine::collect_unloaded`]).
    pub fn unload(&self, mut worker: DotNetWorker) -> Result<(), DotNetError> {
        let b = self.bridge()?;
        let handle = std::mem::take(&mut worker.handle);
        match b.unload(handle) {
            ST_OK => Ok(()),
            ST_UNKNOWN_WORKER => Err(DotNetError::UnknownWorker {
                worker_id: worker.worker_id.clone(),
            }),
            status => Err(DotNetError::Bridge {
                worker_id: worker.worker_id.clone(),
                step: "unload the worker",
                status,
            }),
        }
    }

    /// Runs up to `max_rounds` full GCs until every unloaded worker context is collected;
    /// returns how many are still alive (0 = all memory of unloaded workers is back).
    pub fn collect_unloaded(&self, max_rounds: u32) -> Result<usize, DotNetError> {
        let b = self.bridge()?;
        let mut a = HandleArgs {
            handle: 0,
            value: i64::from(max_rounds),
        };
        // SAFETY: `collect` is the bridge's Collect entry point, which takes HandleArgs; `a`
        // holds no pointers.
        let st = unsafe { call(b.collect, &mut a) };
        if st != ST_OK {
            return Err(DotNetError::Bridge {
                worker_id: String::new(),
                step: "collect unloaded workers",
                status: st,
            });
        }
        Ok(usize::try_from(a.value).unwrap_or(0))
    }
}

impl Engine for DotNetEngine {
    type Worker = DotNetWorker;
    type Error = DotNetError;

    fn load(&self, spec: &LoadSpec) -> Result<DotNetWorker, DotNetError> {
        let first = !DotNetEngine::runtime_started();
        // CoreCLR copies the process environment when it starts: start it before the worker's
        // variables are set, or the first worker's id would stay in every later lookup.
        self.bridge()?;
        // The worker's static initialisers and constructor run inside this call; the bridge
        // sets the variables in the managed environment, the native ones are for libraries
        // the worker P/Invokes (and ENV_LOCK serialises loads).
        let w = super::env::with_worker_env(spec, || {
            DotNetEngine::load_with(
                self,
                &spec.worker_id,
                &spec.package_dir,
                &spec.library_path,
                &spec.topic,
                Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
                spec.entry_point == wm_shared::package::csharp_source::VALIDATE_ONLY_ENTRY,
            )
        })?;
        if first && let Ok((rt, took)) = self.start() {
            crate::sandbox::log(&format!(
                "started .NET {} from {} ({}) in {} ms",
                rt.bridge_framework()
                    .map_or_else(String::new, ToString::to_string),
                rt.root.display(),
                rt.source,
                took.as_millis()
            ));
        }
        crate::sandbox::log(&format!(
            "worker {}: loaded {} in its own collectible context",
            spec.worker_id, spec.library_path
        ));
        Ok(w)
    }

    fn process(&self, worker: &DotNetWorker, msg_id: u64, event: &[u8]) -> ProcessOutcome {
        let started = Instant::now();
        let outcome = DotNetEngine::process(self, worker, msg_id, event);
        let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (status, response, error) = match outcome {
            Outcome::Reply(bytes) => (ResultStatus::Ok, bytes, String::new()),
            Outcome::NoReply => (ResultStatus::NoReply, Vec::new(), String::new()),
            Outcome::WorkerException(t) => (ResultStatus::WorkerException, Vec::new(), t),
            Outcome::InvalidResponse(t) => (ResultStatus::InvalidResponse, Vec::new(), t),
            Outcome::Failed(t) => (ResultStatus::ProcessFailed, Vec::new(), t),
            Outcome::UnknownWorker => (
                ResultStatus::UnknownWorker,
                Vec::new(),
                format!(
                    "worker {} is not loaded in the .NET engine",
                    worker.worker_id
                ),
            ),
        };
        ProcessOutcome {
            status,
            code: 0,
            response,
            error,
            elapsed_ns,
        }
    }

    fn unload(&self, worker: DotNetWorker) -> Result<(), DotNetError> {
        DotNetEngine::unload(self, worker)
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads `len` bytes at `p` as a slice (empty for null or a negative length).
///
/// # Safety
/// When `p` is non-null and `len > 0`, `p` must be valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(p: *const u8, len: i64) -> &'a [u8] {
    match usize::try_from(len) {
        Ok(n) if n > 0 && !p.is_null() => {
            // SAFETY: non-null and, per this function's contract, valid for `n` bytes for 'a.
            unsafe { std::slice::from_raw_parts(p, n) }
        }
        _ => &[],
    }
}

/// Turns the bridge's context pointer back into the caller's [`CallCtx`].
///
/// # Safety
/// `ctx` must be null or the pointer a [`DotNetEngine`] call passed to the bridge, during that
/// call (the bridge guarantees it never uses one afterwards).
unsafe fn ctx_ref<'a>(ctx: *const c_void) -> Option<&'a CallCtx<'a>> {
    // SAFETY: per this function's contract the pointer is null or points to a live CallCtx.
    unsafe { ctx.cast::<CallCtx<'a>>().as_ref() }
}

/// `DeliverCallback(IntPtr ctx, int kind, IntPtr data, long length)`: the reply or a text.
extern "C" fn cb_deliver(ctx: *const c_void, kind: i32, data: *const u8, len: i64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the bridge passes back the ctx of the call in progress (see ctx_ref).
        let Some(c) = (unsafe { ctx_ref(ctx) }) else {
            return;
        };
        // SAFETY: the bridge passes a pinned managed buffer of `len` bytes, valid during
        // this callback; it is copied before returning.
        let b = unsafe { bytes(data, len) }.to_vec();
        if let Ok(mut g) = c.delivered.lock() {
            *g = Some((kind, b));
        }
    }));
}

/// `NativeLogCallback(IntPtr ctx, int level, IntPtr message, int length)`.
extern "C" fn cb_log(ctx: *const c_void, level: i32, msg: *const u8, len: i32) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the bridge passes back the ctx of the call in progress (see ctx_ref).
        let Some(c) = (unsafe { ctx_ref(ctx) }) else {
            return;
        };
        // SAFETY: WorkerContext.Log passes a pinned UTF-8 buffer of `len` bytes, valid during
        // this callback.
        let text = String::from_utf8_lossy(unsafe { bytes(msg, i64::from(len)) });
        c.services.log(c.worker_id, c.msg_id, level, &text);
    }));
}

/// `NativeGatewayCallback(ctx, service, len, method, len, request, len, out response, out len)`.
/// The response (or, on failure, an error text) is `malloc`ed here and freed by [`cb_free`].
#[allow(clippy::too_many_arguments)]
extern "C" fn cb_gateway(
    ctx: *const c_void,
    service: *const u8,
    service_len: i32,
    method: *const u8,
    method_len: i32,
    req: *const u8,
    req_len: i32,
    resp: *mut *mut u8,
    resp_len: *mut i32,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| -> (i32, Vec<u8>) {
        // SAFETY: the bridge passes back the ctx of the call in progress (see ctx_ref).
        let Some(c) = (unsafe { ctx_ref(ctx) }) else {
            return (GW_UNAVAILABLE, b"no call context".to_vec());
        };
        // SAFETY: WorkerContext.InvokeGateway passes pinned buffers of the given lengths, valid
        // during this callback.
        let (s, m, body) = unsafe {
            (
                bytes(service, i64::from(service_len)),
                bytes(method, i64::from(method_len)),
                bytes(req, i64::from(req_len)),
            )
        };
        let s = String::from_utf8_lossy(s);
        let m = String::from_utf8_lossy(m);
        match c
            .services
            .gateway_call(c.worker_id, c.msg_id, &s, &m, body, c.gateway_timeout)
        {
            Ok(v) => (0, v),
            Err(GatewayFailure::Status(st)) => (
                if st == 0 { GW_UNAVAILABLE } else { st },
                b"the gateway answered with an error".to_vec(),
            ),
            Err(GatewayFailure::Timeout) => (
                GW_TIMEOUT,
                format!(
                    "no gateway reply within {} ms",
                    c.gateway_timeout.as_millis()
                )
                .into_bytes(),
            ),
            Err(GatewayFailure::Unavailable) => {
                (GW_UNAVAILABLE, b"the supervisor cannot be reached".to_vec())
            }
        }
    }));
    let (status, body) =
        r.unwrap_or_else(|_| (GW_UNAVAILABLE, b"gateway callback panicked".to_vec()));
    if resp.is_null() || resp_len.is_null() {
        return status;
    }
    let n = i32::try_from(body.len()).unwrap_or(i32::MAX);
    let len = usize::try_from(n).unwrap_or(0);
    // SAFETY: malloc has no preconditions; a null result is handled below.
    let p = unsafe { libc::malloc(len.max(1)) }.cast::<u8>();
    if p.is_null() {
        // SAFETY: resp and resp_len are non-null out parameters of the managed caller.
        unsafe {
            *resp = std::ptr::null_mut();
            *resp_len = 0;
        }
        return GW_UNAVAILABLE;
    }
    // SAFETY: `p` was just allocated with at least `len` bytes, `body` has at least `len`
    // bytes, and they do not overlap; resp/resp_len are non-null out parameters.
    unsafe {
        std::ptr::copy_nonoverlapping(body.as_ptr(), p, len);
        *resp = p;
        *resp_len = n;
    }
    status
}

/// `NativeFreeCallback(IntPtr ctx, IntPtr response)`: frees what [`cb_gateway`] allocated.
extern "C" fn cb_free(_ctx: *const c_void, p: *mut u8) {
    if !p.is_null() {
        // SAFETY: WorkerContext.InvokeGateway calls this exactly once per non-null response,
        // which cb_gateway allocated with malloc.
        unsafe { libc::free(p.cast::<c_void>()) };
    }
}
