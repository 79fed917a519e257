//! The `VirtufinHost` callbacks: `log`, `gateway_call`, `free_response`.
//!
//! The seed says the callbacks get `host->engine_ptr` as their first argument but leaves it
//! open, so both that value and the `VirtufinHost*` itself are accepted. Both are looked up in
//! a registry of live hosts: an unknown pointer is ignored (`log`, `free_response`) or
//! answered with [`GW_BAD_ARGUMENT`] (`gateway_call`); it is never dereferenced. `engine_ptr`
//! is a token, not an address of anything.
//!
//! No panic crosses `extern "C"`: each callback body runs under `catch_unwind`.
//!
//! `gateway_call` responses are allocated with `malloc` (so even a plugin that wrongly calls
//! `free` on one does not corrupt the heap) and remembered until `free_response`; a pointer
//! that was not handed out (or was already freed) is ignored and logged, never freed.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use wm_shared::sync::Locked as _;
use wm_shared::sync::RwLocked as _;

use super::abi::{ABI_VERSION, VirtufinHost};

/// `gateway_call` return value: a null pointer, a negative length, an unknown host handle.
pub const GW_BAD_ARGUMENT: i32 = -1;
/// `gateway_call` return value: no reply within the worker's timeout.
pub const GW_TIMEOUT: i32 = -2;
/// `gateway_call` return value: the supervisor could not be reached (ring closed or full).
pub const GW_UNAVAILABLE: i32 = -3;

/// Longest log message forwarded; longer ones are cut (on a char boundary) and marked.
pub const MAX_LOG_BYTES: usize = 16 * 1024;

/// Why a gateway call produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayFailure {
    /// The supervisor answered with a non-zero status (returned to the plugin as is).
    Status(i32),
    /// No answer within the timeout.
    Timeout,
    /// The request could not be sent (ring closed, frame too large).
    Unavailable,
}

/// What the callbacks need from the host process: the ring, in the binary.
pub trait HostServices: Send + Sync {
    /// Forwards a plugin log line (sent as a `Log` frame).
    fn log(&self, worker_id: &str, msg_id: u64, level: i32, message: &str);
    /// Sends a `GatewayCall` and waits for its `GatewayReply`, at most `timeout`.
    fn gateway_call(
        &self,
        worker_id: &str,
        msg_id: u64,
        service: &str,
        method: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, GatewayFailure>;
}

/// What a registered host handle stands for.
pub struct HostContext {
    /// The worker the library was loaded for.
    pub worker_id: String,
    /// Bounds `gateway_call`.
    pub timeout: Duration,
    services: Arc<dyn HostServices>,
}

static REGISTRY: RwLock<Option<HashMap<usize, Arc<HostContext>>>> = RwLock::new(None);
static RESPONSES: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);

/// A `VirtufinHost` registered with the callbacks; unregistered (and freed) on drop, which
/// must happen after the library it was handed to has been closed.
pub struct RegisteredHost {
    host: Box<VirtufinHost>,
    token: usize,
}

// SAFETY: the raw pointer inside VirtufinHost is a token (never dereferenced) and the struct
// is only read by plugin code after creation; moving or sharing it across threads is fine.
unsafe impl Send for RegisteredHost {}
// SAFETY: as above; nothing mutates the struct after `register`.
unsafe impl Sync for RegisteredHost {}

impl RegisteredHost {
    /// Builds a `VirtufinHost` for `worker_id` and registers both of its handles.
    pub fn register(
        worker_id: &str,
        timeout: Duration,
        services: Arc<dyn HostServices>,
    ) -> RegisteredHost {
        // Tokens are odd and small multiples, never a valid heap address of ours, and never
        // reused within the process.
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) * 16 + 1;
        let host = Box::new(VirtufinHost {
            engine_ptr: token as *mut c_void,
            abi_version: ABI_VERSION,
            log: Some(host_log),
            gateway_call: Some(host_gateway_call),
            free_response: Some(host_free_response),
        });
        let ctx = Arc::new(HostContext {
            worker_id: worker_id.to_string(),
            timeout,
            services,
        });
        let addr = &*host as *const VirtufinHost as usize;
        let mut reg = REGISTRY.write_locked();
        let map = reg.get_or_insert_with(HashMap::new);
        map.insert(token, ctx.clone());
        map.insert(addr, ctx);
        RegisteredHost { host, token }
    }

    /// The pointer handed to the plugin's entry point.
    pub fn as_ptr(&self) -> *const VirtufinHost {
        &*self.host
    }
}

impl Drop for RegisteredHost {
    fn drop(&mut self) {
        let addr = &*self.host as *const VirtufinHost as usize;
        let mut reg = REGISTRY.write_locked();
        if let Some(map) = reg.as_mut() {
            map.remove(&self.token);
            map.remove(&addr);
        }
    }
}

fn lookup(handle: *mut c_void) -> Option<Arc<HostContext>> {
    let reg = REGISTRY.read_locked();
    reg.as_ref()?.get(&(handle as usize)).cloned()
}

/// # Safety
/// `s` must be null or point to a NUL-terminated string readable for the call.
unsafe fn c_str<'a>(s: *const c_char) -> Option<&'a CStr> {
    if s.is_null() {
        None
    } else {
        // SAFETY: non-null, and the caller guarantees NUL termination and validity.
        Some(unsafe { CStr::from_ptr(s) })
    }
}

fn truncate(msg: &str) -> std::borrow::Cow<'_, str> {
    if msg.len() <= MAX_LOG_BYTES {
        return msg.into();
    }
    let mut end = MAX_LOG_BYTES;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [truncated]", &msg[..end]).into()
}

/// `log`: forwards the line as a `Log` frame. Unknown handle or null message: ignored.
unsafe extern "C" fn host_log(handle: *mut c_void, level: i32, message: *const c_char) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(ctx) = lookup(handle) else {
            return;
        };
        // SAFETY: the seed says `message` is a NUL-terminated UTF-8 string valid for the
        // duration of the call; null is checked in c_str.
        let Some(msg) = (unsafe { c_str(message) }) else {
            return;
        };
        let msg = msg.to_string_lossy();
        ctx.services.log(
            &ctx.worker_id,
            crate::crash::current_msg_id(),
            level,
            &truncate(&msg),
        );
    }));
}

/// `gateway_call`: sends a `GatewayCall`, blocks for the reply (bounded by the worker's
/// timeout). 0 and a `malloc`ed response on success; otherwise a non-zero code and a null
/// response.
unsafe extern "C" fn host_gateway_call(
    handle: *mut c_void,
    service: *const c_char,
    method: *const c_char,
    request: *const u8,
    request_len: i32,
    response: *mut *mut u8,
    response_len: *mut i32,
) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        if response.is_null() || response_len.is_null() {
            return GW_BAD_ARGUMENT;
        }
        // SAFETY: both out-pointers are non-null and, per the ABI, point to writable slots.
        unsafe {
            *response = std::ptr::null_mut();
            *response_len = 0;
        }
        let Some(ctx) = lookup(handle) else {
            return GW_BAD_ARGUMENT;
        };
        // SAFETY: the ABI passes NUL-terminated strings; null is checked in c_str.
        let (Some(service), Some(method)) = (unsafe { c_str(service) }, unsafe { c_str(method) })
        else {
            return GW_BAD_ARGUMENT;
        };
        let payload: &[u8] = match request_len {
            n if n < 0 => return GW_BAD_ARGUMENT,
            0 => &[],
            _ if request.is_null() => return GW_BAD_ARGUMENT,
            // SAFETY: the plugin passes `request_len` readable bytes at `request`
            // (non-null, positive length checked above).
            n => unsafe { std::slice::from_raw_parts(request, n as usize) },
        };
        let reply = ctx.services.gateway_call(
            &ctx.worker_id,
            crate::crash::current_msg_id(),
            &service.to_string_lossy(),
            &method.to_string_lossy(),
            payload,
            ctx.timeout,
        );
        match reply {
            Ok(bytes) => {
                let Ok(len) = i32::try_from(bytes.len()) else {
                    return GW_UNAVAILABLE;
                };
                if bytes.is_empty() {
                    return 0;
                }
                // SAFETY: malloc with a non-zero size; the result is checked for null.
                let buf = unsafe { libc::malloc(bytes.len()) }.cast::<u8>();
                if buf.is_null() {
                    return GW_UNAVAILABLE;
                }
                // SAFETY: buf has bytes.len() writable bytes and does not overlap `bytes`.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
                RESPONSES
                    .locked()
                    .get_or_insert_with(HashMap::new)
                    .insert(buf as usize, bytes.len());
                // SAFETY: out-pointers checked non-null at the top.
                unsafe {
                    *response = buf;
                    *response_len = len;
                }
                0
            }
            Err(GatewayFailure::Status(0)) => GW_UNAVAILABLE,
            Err(GatewayFailure::Status(s)) => s,
            Err(GatewayFailure::Timeout) => GW_TIMEOUT,
            Err(GatewayFailure::Unavailable) => GW_UNAVAILABLE,
        }
    }))
    .unwrap_or(GW_UNAVAILABLE)
}

/// `free_response`: frees a buffer `gateway_call` returned, exactly once. Null: ignored.
/// Anything else (a double free, a foreign pointer): ignored and logged.
unsafe extern "C" fn host_free_response(handle: *mut c_void, response: *mut u8) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if response.is_null() {
            return;
        }
        let known = RESPONSES
            .locked()
            .as_mut()
            .and_then(|m| m.remove(&(response as usize)))
            .is_some();
        if known {
            // SAFETY: the pointer came from our malloc in host_gateway_call and was just
            // removed from the registry, so it is freed exactly once.
            unsafe { libc::free(response.cast()) };
        } else if let Some(ctx) = lookup(handle) {
            ctx.services.log(
                &ctx.worker_id,
                crate::crash::current_msg_id(),
                3,
                &format!(
                    "host: free_response ignored a pointer gateway_call did not return \
                     (or already freed): {response:p}"
                ),
            );
        } else {
            crate::sandbox::log(&format!(
                "free_response ignored an unknown pointer {response:p} from an unknown host"
            ));
        }
    }));
}

/// Number of gateway responses handed out and not yet freed (for tests and stats).
pub fn outstanding_responses() -> usize {
    RESPONSES.locked().as_ref().map_or(0, HashMap::len)
}
