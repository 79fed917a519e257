//! NativeDllEngine: `.so` workers through the C ABI of `native-dll-workers.md`.
//!
//! Load (the seed's `LoadCodeAsync`):
//! 1. resolve `library_path` inside `package_dir` (no absolute path, no `..`, no symlink out);
//! 2. copy the library into a private memfd and `dlopen("/proc/self/fd/<n>")`. The package
//!    dir belongs to the supervisor; the copy means two versions with the same soname load
//!    side by side (hot reload), the supervisor may delete the package while it is loaded, and
//!    nothing is written to disk, so a crash leaves no temp file behind and Landlock can deny
//!    every write. `VIRTUFIN_WORKER_ID` and `VIRTUFIN_WORKER_TOPIC` are set while `dlopen` runs
//!    the library's constructors, then restored, as the original does;
//! 3. resolve the entry point and free-result exports named by the nuspec; a missing one
//!    refuses the load, naming it;
//! 4. build the `VirtufinHost` (`engine_ptr` an opaque token, `abi_version` 1).
//!
//! Process: calls the entry point, copies `*out_buf` before looking at it, calls `FreeResult`
//! exactly once for every non-null `*out_buf` (every path), then classifies: non-zero return
//! -> ProcessFailed (with the code); null buffer and 0 -> InvalidResponse (issue 4: NULL is
//! for failures; "no reply" is a WorkerResponse with neither field); `out_len <= 0` with a
//! buffer, a length over the frame limit, or bytes that fail the WorkerResponse verifier ->
//! InvalidResponse. Never a panic.
//!
//! Unload (the seed's `DisposeAsync`): `dlclose`, free the host struct, close the memfd copy
//! (which deletes it). If the library refuses to unload (`RTLD_NODELETE`, C++ unique symbols)
//! the memfd is kept open, so its `/proc/self/fd/<n>` name is never reused for another library.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libloading::os::unix::Library;

use super::env::with_worker_env;
use super::{Engine, LoadSpec, ProcessOutcome, ResultStatus};
use crate::ffi::abi::{FreeResultFn, ProcessFn};
use crate::ffi::callbacks::{HostServices, RegisteredHost};

/// Largest library accepted (bytes).
pub const MAX_LIBRARY_BYTES: u64 = 512 * 1024 * 1024;

/// Default entry point and free-result names (the nuspec defaults).
pub const DEFAULT_ENTRY_POINT: &str = "Process";
pub const DEFAULT_FREE_RESULT: &str = "FreeResult";

/// Errors of the native engine; each names the worker and the step.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(
        "worker {worker}: library path {path:?} is not a relative path inside the package ({reason})"
    )]
    LibraryPath {
        worker: String,
        path: String,
        reason: &'static str,
    },
    #[error("worker {worker}: cannot read library {}: {source}", path.display())]
    Read {
        worker: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker}: library {} is {size} bytes, over the {MAX_LIBRARY_BYTES}-byte limit", path.display())]
    TooLarge {
        worker: String,
        path: PathBuf,
        size: u64,
    },
    #[error("worker {worker}: copying the library into memory failed at {step}: {source}")]
    Copy {
        worker: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker}: dlopen of {} failed: {source}", path.display())]
    Open {
        worker: String,
        path: PathBuf,
        #[source]
        source: libloading::Error,
    },
    #[error(
        "worker {worker}: library {} has no export {export:?} ({which}); check the nuspec's \
         <{element}> or the library's exported symbols (nm -D)", path.display()
    )]
    MissingExport {
        worker: String,
        path: PathBuf,
        export: String,
        which: &'static str,
        element: &'static str,
    },
    #[error("worker {worker}: dlclose failed: {source}")]
    Close {
        worker: String,
        #[source]
        source: libloading::Error,
    },
}

/// The native engine. `services` carries the callbacks' traffic to the supervisor;
/// `max_response` is the largest reply accepted (the ring's frame limit less overhead).
pub struct NativeEngine {
    services: Arc<dyn HostServices>,
    max_response: usize,
}

impl NativeEngine {
    pub fn new(services: Arc<dyn HostServices>, max_response: usize) -> Self {
        NativeEngine {
            services,
            max_response,
        }
    }
}

/// A loaded native worker.
pub struct NativeWorker {
    worker_id: String,
    process: ProcessFn,
    free_result: FreeResultFn,
    library: Option<Library>,
    host: Option<RegisteredHost>,
    image: Option<OwnedFd>,
    image_path: String,
}

impl NativeWorker {
    /// The worker id this library was loaded for.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Closes the library, frees the host struct and drops the memfd copy.
    fn teardown(&mut self) -> Result<(), NativeError> {
        let closed = match self.library.take() {
            Some(lib) => {
                let r = lib.close().map_err(|source| NativeError::Close {
                    worker: self.worker_id.clone(),
                    source,
                });
                if r.is_ok() {
                    crate::sandbox::log(&format!("worker {}: unloaded", self.worker_id));
                }
                r
            }
            None => Ok(()),
        };
        // The library's destructors have run (inside dlclose) and may have used the host
        // struct; only now is it unregistered and freed.
        self.host.take();
        if let Some(fd) = self.image.take()
            && still_loaded(&self.image_path)
        {
            {
                crate::sandbox::log(&format!(
                    "worker {}: the library stayed mapped after dlclose (RTLD_NODELETE or C++ \
                     unique symbols); keeping its memfd open so its name is not reused",
                    self.worker_id
                ));
                std::mem::forget(fd);
            }
        }
        closed
    }
}

impl Drop for NativeWorker {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            crate::sandbox::log(&super::error_chain(&e));
        }
    }
}

fn still_loaded(path: &str) -> bool {
    // SAFETY: RTLD_NOLOAD never loads anything (so no constructor runs); it only returns a
    // handle, with its reference count raised, if the object is still mapped. That handle is
    // closed at once, dropping the count back.
    match unsafe { Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_NOLOAD) } {
        Ok(lib) => {
            let _ = lib.close();
            true
        }
        Err(_) => false,
    }
}

/// Resolves `rel` under `dir`, refusing anything that could leave it.
fn resolve_library(worker: &str, dir: &Path, rel: &str) -> Result<PathBuf, NativeError> {
    let bad = |reason| NativeError::LibraryPath {
        worker: worker.to_string(),
        path: rel.to_string(),
        reason,
    };
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err(bad("empty"));
    }
    if !p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad("absolute or contains .."));
    }
    let joined = dir.join(p);
    let read_err = |source| NativeError::Read {
        worker: worker.to_string(),
        path: joined.clone(),
        source,
    };
    let real = joined.canonicalize().map_err(read_err)?;
    let real_dir = dir.canonicalize().map_err(|source| NativeError::Read {
        worker: worker.to_string(),
        path: dir.to_path_buf(),
        source,
    })?;
    if !real.starts_with(&real_dir) {
        return Err(bad("a symlink points outside the package"));
    }
    Ok(real)
}

/// Copies `path` into a new memfd and returns it.
fn copy_to_memfd(worker: &str, path: &Path) -> Result<OwnedFd, NativeError> {
    let io_err = |step, source| NativeError::Copy {
        worker: worker.to_string(),
        step,
        source,
    };
    let mut src = std::fs::File::open(path).map_err(|source| NativeError::Read {
        worker: worker.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let size = src
        .metadata()
        .map_err(|source| NativeError::Read {
            worker: worker.to_string(),
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size > MAX_LIBRARY_BYTES {
        return Err(NativeError::TooLarge {
            worker: worker.to_string(),
            path: path.to_path_buf(),
            size,
        });
    }
    // The memfd's name shows in /proc/self/maps and in a debugger: keep the worker id, minus
    // anything that is not printable.
    let label: String = format!("wm:{worker}")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect();
    let name = CString::new(label).unwrap_or_else(|_| c"wm:worker".to_owned());
    // SAFETY: `name` is NUL-terminated and outlives the call; flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut dst = std::fs::File::from(owned);
    std::io::copy(&mut src, &mut dst).map_err(|e| io_err("copy", e))?;
    dst.flush().map_err(|e| io_err("flush", e))?;
    Ok(OwnedFd::from(dst))
}

impl Engine for NativeEngine {
    type Worker = NativeWorker;
    type Error = NativeError;

    fn load(&self, spec: &LoadSpec) -> Result<NativeWorker, NativeError> {
        let worker = spec.worker_id.as_str();
        let path = resolve_library(worker, &spec.package_dir, &spec.library_path)?;
        let image = copy_to_memfd(worker, &path)?;
        let image_path = format!("/proc/self/fd/{}", image.as_raw_fd());

        let library = with_worker_env(spec, || {
            // SAFETY: dlopen runs the library's constructors: plugin code, which is the
            // point of this process. It runs under the seccomp filter and with this thread
            // marked for the crash handler (see worker.rs), which is all the safety a host
            // of untrusted code can give. RTLD_LOCAL keeps its symbols from interposing on
            // other workers' libraries.
            unsafe { Library::open(Some(image_path.as_str()), libc::RTLD_NOW | libc::RTLD_LOCAL) }
        })
        .map_err(|source| NativeError::Open {
            worker: worker.to_string(),
            path: path.clone(),
            source,
        })?;

        let entry = if spec.entry_point.is_empty() {
            DEFAULT_ENTRY_POINT
        } else {
            spec.entry_point.as_str()
        };
        let free = if spec.free_result.is_empty() {
            DEFAULT_FREE_RESULT
        } else {
            spec.free_result.as_str()
        };
        let missing = |export: &str, which, element| NativeError::MissingExport {
            worker: worker.to_string(),
            path: path.clone(),
            export: export.to_string(),
            which,
            element,
        };
        // SAFETY: the symbol is typed as the seed's Process signature; the ABI contract is
        // that the export has exactly that signature (a plugin lying about it is plugin
        // misbehaviour the process boundary contains). The fn pointer is copied out and kept
        // only as long as `library` stays open (both live in NativeWorker, and teardown
        // closes the library last).
        let process: ProcessFn = match unsafe { library.get::<ProcessFn>(entry) } {
            Ok(sym) => *sym,
            Err(_) => {
                let _ = library.close();
                return Err(missing(entry, "entry point", "virtufinEntryPoint"));
            }
        };
        // SAFETY: as above, with the seed's FreeResult signature.
        let free_result: FreeResultFn = match unsafe { library.get::<FreeResultFn>(free) } {
            Ok(sym) => *sym,
            Err(_) => {
                let _ = library.close();
                return Err(missing(free, "free-result function", "virtufinFreeResult"));
            }
        };

        let host = RegisteredHost::register(
            worker,
            Duration::from_millis(u64::from(spec.timeout_ms.max(1))),
            self.services.clone(),
        );
        crate::sandbox::log(&format!(
            "worker {worker}: loaded {} (entry {entry}, free {free}, abi 1)",
            path.display()
        ));
        Ok(NativeWorker {
            worker_id: worker.to_string(),
            process,
            free_result,
            library: Some(library),
            host: Some(host),
            image: Some(image),
            image_path,
        })
    }

    fn process(&self, w: &NativeWorker, _msg_id: u64, event: &[u8]) -> ProcessOutcome {
        let Some(host) = w.host.as_ref() else {
            return ProcessOutcome::failed(ResultStatus::UnknownWorker, "worker is unloading");
        };
        let Ok(in_len) = i32::try_from(event.len()) else {
            return ProcessOutcome::failed(
                ResultStatus::ProcessFailed,
                format!(
                    "event of {} bytes does not fit the ABI's int32 length",
                    event.len()
                ),
            );
        };
        let mut out_buf: *mut u8 = std::ptr::null_mut();
        let mut out_len: i32 = 0;
        let started = Instant::now();
        // SAFETY: calling plugin code through its declared ABI: `host` is a registered
        // VirtufinHost that outlives the call, `event` is readable for in_len bytes for the
        // whole call, and both out-pointers point to live locals. What the plugin does inside
        // is contained by the process boundary.
        let rc = unsafe {
            (w.process)(
                host.as_ptr(),
                event.as_ptr(),
                in_len,
                &mut out_buf,
                &mut out_len,
            )
        };
        let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);

        // Copy first (hostile memory: never verify in place), then hand the buffer back.
        let copy = if !out_buf.is_null() && out_len > 0 && (out_len as usize) <= self.max_response {
            // SAFETY: the plugin returned `out_len` bytes at `out_buf`, non-null and of a
            // positive, bounded length, valid until FreeResult below.
            Some(super::reply_buf::copy_of(unsafe {
                std::slice::from_raw_parts(out_buf, out_len as usize)
            }))
        } else {
            None
        };
        if !out_buf.is_null() {
            // SAFETY: FreeResult exactly once for the non-null buffer Process returned, as the
            // seed requires, on every path (the classification below only uses the copy).
            unsafe { (w.free_result)(out_buf) };
        }

        let outcome = |status, code, response, error: String| ProcessOutcome {
            status,
            code,
            response,
            error,
            elapsed_ns,
        };
        if rc != 0 {
            return outcome(
                ResultStatus::ProcessFailed,
                rc,
                Vec::new(),
                format!("the worker's {} returned {rc}", "entry point"),
            );
        }
        if out_buf.is_null() {
            // The seed: on success *out_buf is a WorkerResponse; NULL is for failures. "No
            // reply" is a WorkerResponse with neither field set (issue 4).
            return outcome(
                ResultStatus::InvalidResponse,
                0,
                Vec::new(),
                "the worker returned 0 but set no *out_buf; to send no reply, return a \
                 WorkerResponse with neither result_event nor error_message"
                    .to_string(),
            );
        }
        if out_len <= 0 {
            return outcome(
                ResultStatus::InvalidResponse,
                0,
                Vec::new(),
                format!("the worker returned a buffer with length {out_len}"),
            );
        }
        let Some(bytes) = copy else {
            return outcome(
                ResultStatus::InvalidResponse,
                0,
                Vec::new(),
                format!(
                    "the worker's reply is {out_len} bytes, over the {}-byte limit",
                    self.max_response
                ),
            );
        };
        match wm_shared::protocol::hot::verify_worker_response(&bytes) {
            Ok(_) => outcome(ResultStatus::Ok, 0, bytes, String::new()),
            Err(e) => outcome(
                ResultStatus::InvalidResponse,
                0,
                Vec::new(),
                format!("the worker's reply is not a valid WorkerResponse: {e}"),
            ),
        }
    }

    fn unload(&self, mut worker: NativeWorker) -> Result<(), NativeError> {
        worker.teardown()
    }
}
