//! `_virtufin_native`: the functions under the `virtufin` module, reaching the supervisor
//! through [`HostServices`] like the C ABI callbacks do.
//!
//! Which worker and message a call belongs to is a thread-local set around each load and
//! `Process` call ([`enter`]): a thread the worker started itself has none and gets a
//! `RuntimeError` naming the rule.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ffi::callbacks::{
    GW_BAD_ARGUMENT, GW_TIMEOUT, GW_UNAVAILABLE, GatewayFailure, HostServices, MAX_LOG_BYTES,
};

/// The worker a call runs for.
pub(super) struct CallContext {
    pub(super) worker_id: String,
    /// Bounds each gateway call (the worker's timeout).
    pub(super) timeout: Duration,
    pub(super) services: Arc<dyn HostServices>,
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<CallContext>, u64)>> = const { RefCell::new(None) };
}

/// Marks this thread as running `ctx`'s message `msg_id` until the guard drops.
pub(super) fn enter(ctx: &Arc<CallContext>, msg_id: u64) -> Current {
    let previous = CURRENT.with(|c| c.replace(Some((ctx.clone(), msg_id))));
    Current { previous }
}

/// Restores the previous mark on drop.
pub(super) struct Current {
    previous: Option<(Arc<CallContext>, u64)>,
}

impl Drop for Current {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

fn current(what: &str) -> PyResult<(Arc<CallContext>, u64)> {
    CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        PyRuntimeError::new_err(format!(
            "virtufin.{what} works only on the thread running Process (or the module's import); \
             call it from there"
        ))
    })
}

#[pyfunction]
fn log(level: i32, message: &str) -> PyResult<()> {
    let (ctx, msg_id) = current("log")?;
    let mut end = message.len().min(MAX_LOG_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    ctx.services
        .log(&ctx.worker_id, msg_id, level.clamp(0, 4), &message[..end]);
    Ok(())
}

/// `(status, reply bytes, error text)`; the GIL is released while the call waits.
#[pyfunction]
fn gateway_call<'py>(
    py: Python<'py>,
    service: &str,
    method: &str,
    payload: &[u8],
) -> PyResult<(i32, Bound<'py, PyBytes>, String)> {
    let (ctx, msg_id) = current("gateway_call")?;
    if service.is_empty() || method.is_empty() {
        return Ok((
            GW_BAD_ARGUMENT,
            PyBytes::new(py, b""),
            "service and method must not be empty".into(),
        ));
    }
    let payload = payload.to_vec();
    let (service, method) = (service.to_string(), method.to_string());
    let result = py.detach(|| {
        ctx.services.gateway_call(
            &ctx.worker_id,
            msg_id,
            &service,
            &method,
            &payload,
            ctx.timeout,
        )
    });
    Ok(match result {
        Ok(reply) => (0, PyBytes::new(py, &reply), String::new()),
        Err(GatewayFailure::Status(s)) => (s, PyBytes::new(py, b""), format!("status {s}")),
        Err(GatewayFailure::Timeout) => (
            GW_TIMEOUT,
            PyBytes::new(py, b""),
            format!("no reply within the worker's timeout ({:?})", ctx.timeout),
        ),
        Err(GatewayFailure::Unavailable) => (
            GW_UNAVAILABLE,
            PyBytes::new(py, b""),
            "the supervisor could not be reached".into(),
        ),
    })
}

/// The `_virtufin_native` module.
pub(super) fn module(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyModule>> {
    let m = pyo3::types::PyModule::new(py, "_virtufin_native")?;
    m.add_function(wrap_pyfunction!(log, &m)?)?;
    m.add_function(wrap_pyfunction!(gateway_call, &m)?)?;
    Ok(m)
}
