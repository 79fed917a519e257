//! The two frames of every call, without the owned mirror: `Process` and `ProcessResult`.
//!
//! [`Message::decode`](super::Message::decode) copies every field into owned values (a `String`
//! and a `Vec` per frame) and [`Message::encode`](super::Message::encode) needs them owned
//! too. On a ring lane that is three or four allocations and two extra copies per call on each
//! side, for frames that are read once and dropped. These functions run the same verifier on
//! the same private copy (the ring's `recv` already copied the frame out of shared memory) and
//! then borrow from that copy, and encode from borrowed fields into a reused builder.
//!
//! The decoders check `Process` and `ProcessResult` frames with the hand-written verifier of
//! `hot_verify` (same accept/refuse as the FlatBuffers verifier, proven by differential tests,
//! at a fraction of its cost); frames of other kinds go through the generic verifier.

use flatbuffers::FlatBufferBuilder;

use super::hot_verify::{self, frame::HotFrame};
use super::{
    ProtocolError, ResultStatus, fb, finish_frame, opt_bytes, opt_str, status_from_fb, verify_frame,
};

/// A verified `Process` frame, borrowing the caller's copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRef<'a> {
    pub msg_id: u64,
    pub worker_id: &'a str,
    pub event: &'a [u8],
}

/// A `ProcessResult` with borrowed fields: what `decode_process_result` reads from a verified
/// frame, and what `encode_process_result_into` writes (nothing is copied before the builder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessResultRef<'a> {
    pub msg_id: u64,
    pub worker_id: &'a str,
    pub status: ResultStatus,
    pub code: i32,
    pub response: &'a [u8],
    pub error: &'a str,
    pub elapsed_ns: u64,
}

/// `Ok(Some)` for a valid `Process` frame, `Ok(None)` for a valid frame of another kind (decode
/// it with `Message::decode`), `Err` for bytes that are not a valid frame.
///
/// A `Process` frame is checked by the hand-written verifier (`hot_verify`: the same checks
/// as the FlatBuffers verifier, without its per-step error plumbing); any other kind by the
/// generic one.
pub fn decode_process(bytes: &[u8]) -> Result<Option<ProcessRef<'_>>, ProtocolError> {
    match hot_verify::frame::check(bytes) {
        Ok(HotFrame::Process(p)) => Ok(Some(p)),
        Ok(HotFrame::ProcessResult(_)) => Ok(None),
        Ok(HotFrame::Other) => verify_frame(bytes).map(|_| None),
        Err(refusal) => Err(refused(bytes, refusal)),
    }
}

/// As [`decode_process`], for a `ProcessResult` frame (an unknown status is an error, as in
/// `Message::decode`).
pub fn decode_process_result(bytes: &[u8]) -> Result<Option<ProcessResultRef<'_>>, ProtocolError> {
    match hot_verify::frame::check(bytes) {
        Ok(HotFrame::ProcessResult(r)) => Ok(Some(ProcessResultRef {
            status: status_from_fb(fb::ResultStatus(r.status))?,
            ..r.fields
        })),
        Ok(HotFrame::Process(_)) => Ok(None),
        Ok(HotFrame::Other) => verify_frame(bytes).map(|_| None),
        Err(refusal) => Err(refused(bytes, refusal)),
    }
}

/// Checks that a plugin's reply is a valid `worker_api.fbs` `WorkerResponse`, accepting
/// exactly what `flatbuffers::root::<WorkerResponse>` accepts (the hand-written verifier of
/// `hot_verify`); the error is the generic verifier's, with its trace.
pub fn verify_worker_response(bytes: &[u8]) -> Result<(), flatbuffers::InvalidFlatbuffer> {
    match hot_verify::response::check(bytes) {
        Ok(()) => Ok(()),
        Err(refusal) => {
            match flatbuffers::root::<
                crate::generated::worker_api::virtufin::worker::flat_buffers::WorkerResponse,
            >(bytes)
            {
                Err(e) => Err(e),
                Ok(_) => Err(refusal.into_invalid(bytes)),
            }
        }
    }
}

/// The error for a frame the hand verifier refused: the generic verifier's (its message has a
/// trace), or the hand verifier's own if the generic one accepted (the differential tests
/// check that this never happens).
#[cold]
fn refused(bytes: &[u8], refusal: hot_verify::Refusal) -> ProtocolError {
    let source = match verify_frame(bytes) {
        Err(ProtocolError::Invalid { source, .. }) => source,
        _ => refusal.into_invalid(bytes),
    };
    ProtocolError::Invalid {
        len: bytes.len(),
        source,
    }
}

/// Encodes a `Process` frame into `b` (reset first); the same bytes as
/// `Message::Process(..).encode()`.
pub fn encode_process_into<'b>(
    b: &'b mut FlatBufferBuilder<'_>,
    msg_id: u64,
    worker_id: &str,
    event: &[u8],
) -> &'b [u8] {
    b.reset();
    let worker_id = opt_str(b, worker_id);
    let event = opt_bytes(b, event);
    let t = fb::Process::create(
        b,
        &fb::ProcessArgs {
            msg_id,
            worker_id,
            event,
        },
    );
    finish_frame(b, fb::Payload::Process, t.as_union_value())
}

/// Encodes a `ProcessResult` frame into `b` (reset first); the same bytes as
/// `Message::ProcessResult(..).encode()`.
pub fn encode_process_result_into<'b>(
    b: &'b mut FlatBufferBuilder<'_>,
    r: &ProcessResultRef<'_>,
) -> &'b [u8] {
    b.reset();
    let worker_id = opt_str(b, r.worker_id);
    let response = opt_bytes(b, r.response);
    let error = opt_str(b, r.error);
    let t = fb::ProcessResult::create(
        b,
        &fb::ProcessResultArgs {
            msg_id: r.msg_id,
            worker_id,
            status: super::status_to_fb(r.status),
            code: r.code,
            response,
            error,
            elapsed_ns: r.elapsed_ns,
        },
    );
    finish_frame(b, fb::Payload::ProcessResult, t.as_union_value())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Message, Process, ProcessResult};

    fn results() -> Vec<ProcessResult> {
        vec![
            ProcessResult::default(),
            ProcessResult {
                msg_id: u64::MAX,
                worker_id: "wörker-1".into(),
                status: ResultStatus::Ok,
                code: -3,
                response: vec![7; 300],
                error: String::new(),
                elapsed_ns: 12_345,
            },
            ProcessResult {
                msg_id: 9,
                worker_id: "w".into(),
                status: ResultStatus::WorkerException,
                code: 0,
                response: Vec::new(),
                error: "boom".into(),
                elapsed_ns: 1,
            },
        ]
    }

    #[test]
    fn process_encodes_as_the_owned_message_and_decodes_back() {
        let mut b = FlatBufferBuilder::new();
        for (id, w, ev) in [
            (0, "", &b""[..]),
            (42, "w-0", &[1u8, 2, 3][..]),
            (7, "ü", &[0; 500][..]),
        ] {
            let owned = Message::Process(Process {
                msg_id: id,
                worker_id: w.into(),
                event: ev.to_vec(),
            });
            let bytes = encode_process_into(&mut b, id, w, ev).to_vec();
            assert_eq!(bytes, owned.encode());
            let view = decode_process(&bytes).unwrap().unwrap();
            assert_eq!(
                view,
                ProcessRef {
                    msg_id: id,
                    worker_id: w,
                    event: ev
                }
            );
        }
    }

    #[test]
    fn process_result_encodes_as_the_owned_message_and_decodes_back() {
        let mut b = FlatBufferBuilder::new();
        for r in results() {
            let fields = ProcessResultRef {
                msg_id: r.msg_id,
                worker_id: &r.worker_id,
                status: r.status,
                code: r.code,
                response: &r.response,
                error: &r.error,
                elapsed_ns: r.elapsed_ns,
            };
            let bytes = encode_process_result_into(&mut b, &fields).to_vec();
            assert_eq!(bytes, Message::ProcessResult(r.clone()).encode());
            let v = decode_process_result(&bytes).unwrap().unwrap();
            assert_eq!(
                (
                    v.msg_id,
                    v.worker_id,
                    v.status,
                    v.code,
                    v.response,
                    v.error,
                    v.elapsed_ns
                ),
                (
                    r.msg_id,
                    &r.worker_id[..],
                    r.status,
                    r.code,
                    &r.response[..],
                    &r.error[..],
                    r.elapsed_ns
                )
            );
        }
    }

    #[test]
    fn another_kind_is_none_and_garbage_is_an_error() {
        let ping = Message::Ping { nonce: 1 }.encode();
        assert!(decode_process(&ping).unwrap().is_none());
        assert!(decode_process_result(&ping).unwrap().is_none());
        // A Process is not a ProcessResult and vice versa.
        let mut b = FlatBufferBuilder::new();
        let p = encode_process_into(&mut b, 1, "w", b"e").to_vec();
        assert!(decode_process_result(&p).unwrap().is_none());
        for bad in [&b""[..], &[0xffu8; 64], b"definitely not a flatbuffer"] {
            assert!(matches!(
                decode_process(bad),
                Err(ProtocolError::Invalid { .. })
            ));
            assert!(matches!(
                decode_process_result(bad),
                Err(ProtocolError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn an_unknown_status_is_refused() {
        let mut b = FlatBufferBuilder::new();
        let t = fb::ProcessResult::create(
            &mut b,
            &fb::ProcessResultArgs {
                status: fb::ResultStatus(77),
                ..Default::default()
            },
        );
        let bytes = finish_frame(&mut b, fb::Payload::ProcessResult, t.as_union_value()).to_vec();
        assert!(matches!(
            decode_process_result(&bytes),
            Err(ProtocolError::UnknownEnum { value: 77, .. })
        ));
    }

    proptest! {
        /// Corruptions of valid frames never panic, and whatever decodes as a view decodes the
        /// same through the owned path (the view trusts nothing the verifier did not check).
        #[test]
        fn corrupted_frames_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let mut b = FlatBufferBuilder::new();
            let mut p = encode_process_into(&mut b, 5, "worker", &[3; 64]).to_vec();
            for (i, v) in &flips {
                let n = p.len();
                p[i % n] = *v;
            }
            if let Ok(Some(v)) = decode_process(&p) {
                match Message::decode(&p) {
                    Ok(Message::Process(o)) => {
                        prop_assert_eq!(v.msg_id, o.msg_id);
                        prop_assert_eq!(v.worker_id, &o.worker_id[..]);
                        prop_assert_eq!(v.event, &o.event[..]);
                    }
                    other => prop_assert!(false, "view decoded, owned did not: {:?}", other),
                }
            }
            let mut r = Message::ProcessResult(results()[1].clone()).encode();
            for (i, v) in &flips {
                let n = r.len();
                r[i % n] = *v;
            }
            let _ = decode_process_result(&r);
        }
    }
}
