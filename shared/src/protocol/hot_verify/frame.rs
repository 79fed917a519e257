//! `Frame { payload: Process | ProcessResult }` checked and read in one pass.

use super::{Checker, Refusal, Step};
use crate::protocol::MAX_TABLES;
use crate::protocol::hot::{ProcessRef, ProcessResultRef};

/// The union tags of `Payload` checked here (host_protocol.fbs; the generated `fb::Payload`).
const PAYLOAD_PROCESS: u8 = 6;
const PAYLOAD_PROCESS_RESULT: u8 = 7;

/// The vtable slots (the generated `VT_*` constants; a test checks they still match).
pub(crate) mod slot {
    pub const FRAME_PAYLOAD_TYPE: usize = 4;
    pub const FRAME_PAYLOAD: usize = 6;
    pub const MSG_ID: usize = 4;
    pub const WORKER_ID: usize = 6;
    pub const EVENT: usize = 8;
    pub const STATUS: usize = 8;
    pub const CODE: usize = 10;
    pub const RESPONSE: usize = 12;
    pub const ERROR: usize = 14;
    pub const ELAPSED_NS: usize = 16;
}

/// A `ProcessResult` as read, its status still the wire's byte (the caller maps it, refusing
/// an unknown value as `Message::decode` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawProcessResult<'a> {
    pub fields: ProcessResultRef<'a>,
    pub status: u8,
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HotFrame<'a> {
    Process(ProcessRef<'a>),
    ProcessResult(RawProcessResult<'a>),
    /// Any other payload (or none): not checked past its tag, so the caller must run the
    /// generic verifier before it calls the frame valid.
    Other,
}

/// Checks `bytes` as `verify_frame` does (same limits) when the payload is a `Process` or a
/// `ProcessResult`, and reads it.
pub(crate) fn check(bytes: &[u8]) -> Step<HotFrame<'_>> {
    check_with(
        bytes,
        bytes.len().saturating_mul(2).max(1 << 10),
        MAX_TABLES,
    )
}

/// [`check`] with other limits (the tests sweep them against the generic verifier's).
pub(crate) fn check_with(
    bytes: &[u8],
    max_apparent: usize,
    max_tables: usize,
) -> Step<HotFrame<'_>> {
    let mut c = Checker::new(bytes, max_apparent, max_tables);
    let root = c.follow(0)?;
    let frame = c.table(root)?;
    let value = c.field(frame, slot::FRAME_PAYLOAD)?;
    let key = c.field(frame, slot::FRAME_PAYLOAD_TYPE)?;
    let (key, value) = match (key, value) {
        (None, None) => return Ok(HotFrame::Other),
        (Some(k), Some(v)) => (c.u8_at(k)?, v),
        _ => return Err(Refusal::InconsistentUnion),
    };
    match key {
        PAYLOAD_PROCESS => {
            let at = c.follow(value)?;
            let t = c.table(at)?;
            Ok(HotFrame::Process(ProcessRef {
                msg_id: c.u64_field(t, slot::MSG_ID)?,
                worker_id: c.str_field(t, slot::WORKER_ID)?,
                event: c.bytes_field(t, slot::EVENT)?,
            }))
        }
        PAYLOAD_PROCESS_RESULT => {
            let at = c.follow(value)?;
            let t = c.table(at)?;
            // In the schema's order (the verifier's), each read as it is checked.
            let msg_id = c.u64_field(t, slot::MSG_ID)?;
            let worker_id = c.str_field(t, slot::WORKER_ID)?;
            let status = c.u8_field(t, slot::STATUS)?;
            let code = c.i32_field(t, slot::CODE)?;
            let response = c.bytes_field(t, slot::RESPONSE)?;
            let error = c.str_field(t, slot::ERROR)?;
            let elapsed_ns = c.u64_field(t, slot::ELAPSED_NS)?;
            Ok(HotFrame::ProcessResult(RawProcessResult {
                fields: ProcessResultRef {
                    msg_id,
                    worker_id,
                    status: Default::default(),
                    code,
                    response,
                    error,
                    elapsed_ns,
                },
                status,
            }))
        }
        _ => Ok(HotFrame::Other),
    }
}
