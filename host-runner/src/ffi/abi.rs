//! Mirrors `schemas/virtufin_worker_api_c.h` (ABI version 1), as the seed
//! (`native-dll-workers.md`) defines it.
//!
//! Ownership:
//! - `in_buf` (the CloudEvent) belongs to the host and is valid for the duration of the call.
//! - `*out_buf` is allocated by the plugin; the host copies it and calls the plugin's
//!   `FreeResult` exactly once for every non-null `*out_buf`, on every path.
//! - a `gateway_call` response is allocated by the host and released by `free_response`.
//! - `VirtufinHost` is owned by the host and outlives every call into the library it was made
//!   for (it is freed after `dlclose`).

use std::ffi::{c_char, c_void};
use std::mem::{offset_of, size_of};

/// ABI version the host implements.
pub const ABI_VERSION: i32 = 1;

/// `void (*log)(void* engine, int32_t level, const char* message)`.
pub type LogFn = unsafe extern "C" fn(*mut c_void, i32, *const c_char);

/// `int32_t (*gateway_call)(void* engine, const char* service, const char* method,
/// const uint8_t* request, int32_t request_len, uint8_t** response, int32_t* response_len)`.
pub type GatewayCallFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *const u8,
    i32,
    *mut *mut u8,
    *mut i32,
) -> i32;

/// `void (*free_response)(void* engine, uint8_t* response)`.
pub type FreeResponseFn = unsafe extern "C" fn(*mut c_void, *mut u8);

/// `int32_t Process(const VirtufinHost*, const uint8_t* in_buf, int32_t in_len,
/// uint8_t** out_buf, int32_t* out_len)`.
pub type ProcessFn =
    unsafe extern "C" fn(*const VirtufinHost, *const u8, i32, *mut *mut u8, *mut i32) -> i32;

/// `void FreeResult(uint8_t* result)`.
pub type FreeResultFn = unsafe extern "C" fn(*mut u8);

/// `VirtufinHost`: 40 bytes on 64-bit platforms.
#[repr(C)]
#[derive(Debug)]
pub struct VirtufinHost {
    /// Opaque to the plugin; the callbacks receive it (or this struct's address).
    pub engine_ptr: *mut c_void,
    /// [`ABI_VERSION`].
    pub abi_version: i32,
    pub log: Option<LogFn>,
    pub gateway_call: Option<GatewayCallFn>,
    pub free_response: Option<FreeResponseFn>,
}

const _: () = {
    assert!(size_of::<VirtufinHost>() == 40);
    assert!(offset_of!(VirtufinHost, engine_ptr) == 0);
    assert!(offset_of!(VirtufinHost, abi_version) == 8);
    assert!(offset_of!(VirtufinHost, log) == 16);
    assert!(offset_of!(VirtufinHost, gateway_call) == 24);
    assert!(offset_of!(VirtufinHost, free_response) == 32);
};
