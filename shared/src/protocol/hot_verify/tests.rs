//! Differential tests: the hand verifier against `flatbuffers`' own, on valid frames of many
//! shapes and on hostile changes of them. They must agree on accept/refuse and, where both
//! accept, on every value read. No case is allowed to differ: the hand verifier makes exactly
//! the generic one's checks (see `mod.rs`), so "stricter" is not needed anywhere.

use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

use super::{frame, response};
use crate::generated::host_protocol::work_manager::host_protocol as fb;
use crate::generated::worker_api::virtufin::worker::flat_buffers as wfb;
use crate::protocol::hot::{self, ProcessRef, ProcessResultRef};
use crate::protocol::{Message, ProtocolError, verify_frame};
use crate::{CloudEvent, WorkerResponse};

/// A seeded xorshift64*: the same cases on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ------------------------------------------------------------------------------------------
// The two sides.

/// What the generic verifier says a frame is (the code `hot` had before the hand verifier).
#[derive(Debug, PartialEq, Eq)]
enum Seen<'a> {
    Refused,
    Process(ProcessRef<'a>),
    Result(ProcessResultRef<'a>, u8),
    Other,
}

fn generic(bytes: &[u8]) -> Seen<'_> {
    let Ok(f) = verify_frame(bytes) else {
        return Seen::Refused;
    };
    if let Some(m) = f.payload_as_process() {
        return Seen::Process(ProcessRef {
            msg_id: m.msg_id(),
            worker_id: m.worker_id().unwrap_or_default(),
            event: m.event().map(|v| v.bytes()).unwrap_or_default(),
        });
    }
    if let Some(m) = f.payload_as_process_result() {
        return Seen::Result(
            ProcessResultRef {
                msg_id: m.msg_id(),
                worker_id: m.worker_id().unwrap_or_default(),
                status: Default::default(),
                code: m.code(),
                response: m.response().map(|v| v.bytes()).unwrap_or_default(),
                error: m.error().unwrap_or_default(),
                elapsed_ns: m.elapsed_ns(),
            },
            m.status().0,
        );
    }
    Seen::Other
}

fn hand(bytes: &[u8]) -> Option<Seen<'_>> {
    Some(match frame::check(bytes) {
        Err(_) => Seen::Refused,
        Ok(frame::HotFrame::Process(p)) => Seen::Process(p),
        Ok(frame::HotFrame::ProcessResult(r)) => Seen::Result(r.fields, r.status),
        // Not checked past the tag: the public decoders ask the generic verifier.
        Ok(frame::HotFrame::Other) => return None,
    })
}

/// Tallies of what a sweep saw, so that a test can show it had teeth (hostile cases that are
/// refused, changed frames that still verify and were compared value by value).
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    refused: usize,
}

/// The core assertion for one buffer: the hand verifier and the generic one agree, and so do
/// the public decoders of `hot` and the generic path they replaced.
fn agree(bytes: &[u8], t: &mut Tally) {
    let g = generic(bytes);
    if let Some(h) = hand(bytes) {
        assert_eq!(h, g, "hand and generic verifiers differ on {}", hex(bytes));
    } else {
        assert!(
            matches!(g, Seen::Refused | Seen::Other),
            "the hand verifier passed on a Process/ProcessResult frame: {}",
            hex(bytes)
        );
    }
    // The public functions, against what they returned before (generic verifier + accessors).
    let p = hot::decode_process(bytes);
    match (&g, &p) {
        (Seen::Refused, Err(ProtocolError::Invalid { .. })) => {}
        (Seen::Process(v), Ok(Some(got))) => assert_eq!(v, got),
        (Seen::Result(..) | Seen::Other, Ok(None)) => {}
        _ => panic!(
            "decode_process gave {p:?}, the generic verifier {g:?}: {}",
            hex(bytes)
        ),
    }
    let r = hot::decode_process_result(bytes);
    match (&g, &r) {
        (Seen::Refused, Err(ProtocolError::Invalid { .. })) => {}
        (Seen::Result(v, status), Ok(Some(got))) => {
            assert_eq!(
                ProcessResultRef {
                    status: got.status,
                    ..*v
                },
                *got
            );
            assert_eq!(*status, crate::protocol::status_to_fb(got.status).0);
        }
        (Seen::Result(_, status), Err(ProtocolError::UnknownEnum { value, .. })) => {
            assert_eq!(status, value)
        }
        (Seen::Process(_) | Seen::Other, Ok(None)) => {}
        _ => panic!(
            "decode_process_result gave {r:?}, the generic verifier {g:?}: {}",
            hex(bytes)
        ),
    }
    if g == Seen::Refused {
        t.refused += 1;
    } else {
        t.accepted += 1;
    }
}

fn agree_response(bytes: &[u8], t: &mut Tally) {
    let g = flatbuffers::root::<wfb::WorkerResponse>(bytes).is_ok();
    let h = response::check(bytes).is_ok();
    assert_eq!(
        h,
        g,
        "hand verifier {} a WorkerResponse the generic one {}: {}",
        if h { "accepts" } else { "refuses" },
        if g { "accepts" } else { "refuses" },
        hex(bytes)
    );
    assert_eq!(hot::verify_worker_response(bytes).is_ok(), g);
    if g {
        t.accepted += 1;
    } else {
        t.refused += 1;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ------------------------------------------------------------------------------------------
// Valid frames of many shapes.

/// One field of a hand-built table.
#[derive(Clone)]
enum Val {
    U8(u8),
    I32(i32),
    U32(u32),
    U64(u64),
    Str(String),
    Bytes(Vec<u8>),
}

/// Builds `Frame { payload_type: kind, payload: table(fields) }` with the low-level builder,
/// fields in the given order (a newer writer may add slots; an older one may omit them).
fn build(kind: u8, fields: &[(u16, Val)], frame_extra: bool, force_defaults: bool) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    b.force_defaults(force_defaults);
    let offs: Vec<Option<u32>> = fields
        .iter()
        .map(|(_, v)| match v {
            Val::Str(s) => Some(b.create_string(s).value()),
            Val::Bytes(x) => Some(b.create_vector(x).value()),
            _ => None,
        })
        .collect();
    let start = b.start_table();
    for ((slot, v), off) in fields.iter().zip(&offs) {
        match v {
            Val::U8(x) => b.push_slot::<u8>(*slot, *x, 0),
            Val::I32(x) => b.push_slot::<i32>(*slot, *x, 0),
            Val::U32(x) => b.push_slot::<u32>(*slot, *x, 0),
            Val::U64(x) => b.push_slot::<u64>(*slot, *x, 0),
            Val::Str(_) | Val::Bytes(_) => {
                b.push_slot_always::<WIPOffset<&str>>(*slot, WIPOffset::new(off.unwrap_or(0)))
            }
        }
    }
    let table = b.end_table(start);
    let extra = frame_extra.then(|| b.create_string("from a newer writer"));
    let fstart = b.start_table();
    b.push_slot_always::<u8>(4, kind);
    b.push_slot_always::<WIPOffset<_>>(6, table);
    if let Some(e) = extra {
        b.push_slot_always::<WIPOffset<_>>(8, e);
        b.push_slot::<u64>(10, 99, 0);
    }
    let root = b.end_table(fstart);
    b.finish(root, None);
    b.finished_data().to_vec()
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = FlatBufferBuilder::new();
    for (id, w, ev) in [
        (0, "", &b""[..]),
        (1, "w0", &[1u8, 2, 3][..]),
        (u64::MAX, "wörker-ü", &[0; 1][..]),
        (7, "a-much-longer-worker-id-0123456789", &[0xff; 97][..]),
    ] {
        out.push(hot::encode_process_into(&mut b, id, w, ev).to_vec());
    }
    let long_worker = "x".repeat(3000);
    out.push(hot::encode_process_into(&mut b, 3, &long_worker, &[5; 5000]).to_vec());
    for r in [
        ProcessResultRef::default(),
        ProcessResultRef {
            msg_id: u64::MAX,
            worker_id: "wörker-1",
            status: crate::protocol::ResultStatus::UnknownWorker,
            code: -3,
            response: &[7; 300],
            error: "",
            elapsed_ns: 12_345,
        },
        ProcessResultRef {
            msg_id: 9,
            worker_id: "w",
            status: crate::protocol::ResultStatus::WorkerException,
            code: i32::MIN,
            response: &[],
            error: "boom \u{1F4A5}",
            elapsed_ns: 1,
        },
    ] {
        out.push(hot::encode_process_result_into(&mut b, &r).to_vec());
    }
    // Fields in another order, every default written, fields from a newer writer.
    let process = |id: u64, w: &str, ev: &[u8]| {
        vec![
            (8u16, Val::Bytes(ev.to_vec())),
            (4, Val::U64(id)),
            (6, Val::Str(w.into())),
        ]
    };
    out.push(build(6, &process(0, "", &[]), false, true));
    out.push(build(6, &process(5, "w", &[1, 2]), true, false));
    let mut newer = process(5, "w", &[1, 2]);
    newer.extend([
        (10, Val::U32(17)),
        (12, Val::Str("a field added later".into())),
        (14, Val::U8(1)),
        (16, Val::Bytes(vec![9; 10])),
    ]);
    out.push(build(6, &newer, false, false));
    // Only some fields (an older writer, or defaults left out).
    out.push(build(
        6,
        &[(6, Val::Str("only-the-id".into()))],
        false,
        false,
    ));
    out.push(build(6, &[], false, false));
    let result = |status: u8| {
        vec![
            (16u16, Val::U64(77)),
            (14, Val::Str("err".into())),
            (12, Val::Bytes(vec![1; 40])),
            (10, Val::I32(-1)),
            (8, Val::U8(status)),
            (6, Val::Str("w".into())),
            (4, Val::U64(1)),
        ]
    };
    out.push(build(7, &result(0), false, true));
    out.push(build(7, &result(4), true, false));
    // An unknown status: verified, then refused by the decoder as `UnknownEnum`.
    out.push(build(7, &result(200), false, false));
    let mut newer = result(1);
    newer.push((18, Val::Str("later".into())));
    out.push(build(7, &newer, false, false));
    // Other kinds: a Ping, a frame without payload, a kind this build does not know.
    out.push(Message::Ping { nonce: 3 }.encode());
    out.push(build(11, &[(4, Val::U64(3))], false, false));
    out.push(build(99, &[(4, Val::U64(3))], false, false));
    out.push(build(0, &[], false, false));
    // The same body read as two fields (a DAG the verifier allows).
    out.push(shared_body_frame());
    out
}

/// A `Process` whose `worker_id` and `event` point at the same bytes.
fn shared_body_frame() -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let s = b.create_string("shared-body");
    let start = b.start_table();
    b.push_slot_always::<WIPOffset<_>>(6, s);
    b.push_slot_always::<WIPOffset<&str>>(8, WIPOffset::new(s.value()));
    let t = b.end_table(start);
    let f = b.start_table();
    b.push_slot_always::<u8>(4, 6);
    b.push_slot_always::<WIPOffset<_>>(6, t);
    let root = b.end_table(f);
    b.finish(root, None);
    b.finished_data().to_vec()
}

fn valid_responses() -> Vec<Vec<u8>> {
    let mut full = CloudEvent::new("id-1", "com.example.ping", "urn:test");
    full.datacontenttype = Some("application/json".into());
    full.subject = Some("sub".into());
    full.time = Some("2026-11-21T10:00:00Z".into());
    full.dataschema = Some("https://example.com/schema".into());
    full.data = Some(br#"{"n":1}"#.to_vec());
    full.set_extension("tenant", "t1").unwrap();
    full.set_extension("correlationid", "c-42").unwrap();
    let bare = CloudEvent::new("", "t", "s");
    let mut out: Vec<Vec<u8>> = [
        WorkerResponse::default(),
        WorkerResponse {
            result_event: Some(full.clone()),
            error_message: None,
        },
        WorkerResponse {
            result_event: Some(bare),
            error_message: Some("partly failed \u{e9}".into()),
        },
        WorkerResponse {
            result_event: None,
            error_message: Some(String::new()),
        },
    ]
    .iter()
    .map(WorkerResponse::to_flatbuffer)
    .collect();
    // A newer writer: an extra slot in each of the three tables.
    let mut b = FlatBufferBuilder::new();
    let name = b.create_string("k");
    let extra = b.create_string("extra");
    let es = b.start_table();
    b.push_slot_always::<WIPOffset<_>>(4, name);
    b.push_slot::<u32>(8, 5, 0);
    let ext = b.end_table(es);
    let exts = b.create_vector(&[ext, ext, ext]);
    let id = b.create_string("id");
    let cs = b.start_table();
    b.push_slot_always::<WIPOffset<_>>(4, id);
    b.push_slot_always::<WIPOffset<_>>(22, exts);
    b.push_slot_always::<WIPOffset<_>>(24, extra);
    let ce = b.end_table(cs);
    let rs = b.start_table();
    b.push_slot_always::<WIPOffset<_>>(4, ce);
    b.push_slot::<u64>(8, 1, 0);
    let root = b.end_table(rs);
    b.finish(root, None);
    out.push(b.finished_data().to_vec());
    out
}

// ------------------------------------------------------------------------------------------
// Hostile changes.

/// Every single-byte change (each bit flipped, 0, 0xff, +-1), every truncation, hostile u16
/// and u32 values written at every position (offsets out of the buffer, unaligned, vtables
/// past the end, lengths that overflow), and junk appended.
fn mutations(valid: &[u8], mut each: impl FnMut(&[u8])) {
    let n = valid.len();
    let mut m = valid.to_vec();
    for i in 0..n {
        let orig = valid[i];
        let mut values: Vec<u8> = (0..8).map(|bit| orig ^ (1 << bit)).collect();
        values.extend([0, 0xff, orig.wrapping_add(1), orig.wrapping_sub(1)]);
        for v in values {
            m[i] = v;
            each(&m);
        }
        m[i] = orig;
    }
    for len in 0..n {
        each(&valid[..len]);
    }
    let n32 = n as u32;
    let words: [u32; 14] = [
        0,
        1,
        2,
        3,
        4,
        n32.wrapping_sub(4),
        n32.wrapping_sub(1),
        n32,
        n32 + 1,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffc,
        0xffff_ffff,
        n32.wrapping_neg(),
    ];
    for i in 0..n.saturating_sub(3) {
        for w in words {
            m[i..i + 4].copy_from_slice(&w.to_le_bytes());
            each(&m);
        }
        m[i..i + 4].copy_from_slice(&valid[i..i + 4]);
    }
    let halves: [u16; 8] = [0, 1, 2, 3, 4, 0x7fff, 0xffff, n as u16];
    for i in 0..n.saturating_sub(1) {
        for h in halves {
            m[i..i + 2].copy_from_slice(&h.to_le_bytes());
            each(&m);
        }
        m[i..i + 2].copy_from_slice(&valid[i..i + 2]);
    }
    let mut longer = valid.to_vec();
    longer.extend([0xAB; 13]);
    each(&longer);
}

#[test]
fn the_vtable_slots_are_the_generated_ones() {
    use frame::slot as f;
    assert_eq!(fb::Frame::VT_PAYLOAD_TYPE as usize, f::FRAME_PAYLOAD_TYPE);
    assert_eq!(fb::Frame::VT_PAYLOAD as usize, f::FRAME_PAYLOAD);
    assert_eq!(fb::Payload::Process.0, 6);
    assert_eq!(fb::Payload::ProcessResult.0, 7);
    assert_eq!(fb::Process::VT_MSG_ID as usize, f::MSG_ID);
    assert_eq!(fb::Process::VT_WORKER_ID as usize, f::WORKER_ID);
    assert_eq!(fb::Process::VT_EVENT as usize, f::EVENT);
    assert_eq!(fb::ProcessResult::VT_MSG_ID as usize, f::MSG_ID);
    assert_eq!(fb::ProcessResult::VT_WORKER_ID as usize, f::WORKER_ID);
    assert_eq!(fb::ProcessResult::VT_STATUS as usize, f::STATUS);
    assert_eq!(fb::ProcessResult::VT_CODE as usize, f::CODE);
    assert_eq!(fb::ProcessResult::VT_RESPONSE as usize, f::RESPONSE);
    assert_eq!(fb::ProcessResult::VT_ERROR as usize, f::ERROR);
    assert_eq!(fb::ProcessResult::VT_ELAPSED_NS as usize, f::ELAPSED_NS);
    use response::slot as r;
    assert_eq!(
        wfb::WorkerResponse::VT_RESULT_EVENT as usize,
        r::RESULT_EVENT
    );
    assert_eq!(
        wfb::WorkerResponse::VT_ERROR_MESSAGE as usize,
        r::ERROR_MESSAGE
    );
    assert_eq!(wfb::CloudEvent::VT_ID as usize, r::EVENT_FIRST_STRING);
    assert_eq!(wfb::CloudEvent::VT_TIME as usize, r::EVENT_LAST_STRING);
    assert_eq!(wfb::CloudEvent::VT_DATA as usize, r::DATA);
    assert_eq!(wfb::CloudEvent::VT_EXTENSIONS as usize, r::EXTENSIONS);
    assert_eq!(wfb::Extension::VT_NAME as usize, r::EXTENSION_NAME);
    assert_eq!(wfb::Extension::VT_VALUE as usize, r::EXTENSION_VALUE);
}

#[test]
fn valid_frames_of_every_shape_read_the_same() {
    let mut t = Tally::default();
    for f in valid_frames() {
        assert!(generic(&f) != Seen::Refused, "not valid: {}", hex(&f));
        agree(&f, &mut t);
    }
    assert_eq!(t.refused, 0);
}

#[test]
fn every_single_byte_change_and_truncation_is_judged_alike() {
    let mut t = Tally::default();
    for f in valid_frames() {
        if f.len() > 1024 {
            // The long frames: truncations and appended junk only (a byte sweep over 8 KiB
            // adds time, not cases: the same code reads their headers).
            for len in (0..f.len()).step_by(7) {
                agree(&f[..len], &mut t);
            }
            continue;
        }
        mutations(&f, |m| agree(m, &mut t));
    }
    // The sweep must have teeth both ways: changed frames that still verify (and were
    // compared field by field), and many refused.
    assert!(t.accepted > 2_000, "{t:?}");
    assert!(t.refused > 20_000, "{t:?}");
}

#[test]
fn strings_that_are_not_utf8_or_not_terminated_are_refused_alike() {
    let mut t = Tally::default();
    let marker = "MARKER";
    let base = build(
        6,
        &[(6, Val::Str(marker.into())), (4, Val::U64(1))],
        false,
        false,
    );
    let at = base
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    for bad in [
        &[0xc3, 0x28][..],         // a broken two-byte sequence
        &[0xed, 0xa0, 0x80],       // a UTF-16 surrogate
        &[0xc0, 0xaf],             // an overlong '/'
        &[0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
        &[0xe2, 0x82],             // cut short
        &[0xff],
    ] {
        let mut f = base.clone();
        f[at..at + bad.len()].copy_from_slice(bad);
        agree(&f, &mut t);
        assert!(matches!(
            hot::decode_process(&f),
            Err(ProtocolError::Invalid { .. })
        ));
    }
    // The terminating 0 replaced.
    let mut f = base.clone();
    f[at + marker.len()] = b'!';
    agree(&f, &mut t);
    assert_eq!(t.refused, 7, "{t:?}");
}

#[test]
fn random_bytes_and_random_changes_are_judged_alike() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut t = Tally::default();
    for _ in 0..20_000 {
        let len = rng.below(160);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // A plausible start (root offset 4..64, aligned) so that some get past the root.
        if len >= 8 && rng.below(2) == 0 {
            let root = (4 + 4 * rng.below(15)) as u32;
            buf[..4].copy_from_slice(&root.to_le_bytes());
        }
        agree(&buf, &mut t);
    }
    let valid: Vec<Vec<u8>> = valid_frames()
        .into_iter()
        .filter(|f| f.len() < 1024)
        .collect();
    for _ in 0..20_000 {
        let mut f = valid[rng.below(valid.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next() as u8;
        }
        agree(&f, &mut t);
    }
    assert!(t.refused > 10_000, "{t:?}");
}

#[test]
fn the_apparent_size_and_table_limits_count_alike() {
    // Every limit from 0 to past the frame's own apparent size: the two verifiers must switch
    // from refusing to accepting at the same limit, so they add up the same bytes.
    let mut checked = 0;
    for f in valid_frames() {
        if f.len() > 1024 {
            continue;
        }
        for max_apparent in 0..=f.len() * 2 {
            for max_tables in 0..3 {
                let opts = VerifierOptions {
                    max_apparent_size: max_apparent,
                    max_tables,
                    ..Default::default()
                };
                let g = fb::root_as_frame_with_opts(&opts, &f).is_ok();
                match frame::check_with(&f, max_apparent, max_tables) {
                    Ok(frame::HotFrame::Other) => {}
                    h => {
                        assert_eq!(h.is_ok(), g, "{max_apparent}/{max_tables}: {}", hex(&f));
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 5_000, "{checked}");
    for r in valid_responses() {
        for max_apparent in 0..=r.len() * 2 {
            for max_tables in 0..6 {
                let opts = VerifierOptions {
                    max_apparent_size: max_apparent,
                    max_tables,
                    ..Default::default()
                };
                let g = flatbuffers::root_with_opts::<wfb::WorkerResponse>(&opts, &r).is_ok();
                let h = response::check_with(&r, max_apparent, max_tables).is_ok();
                assert_eq!(h, g, "{max_apparent}/{max_tables}: {}", hex(&r));
            }
        }
    }
}

#[test]
fn worker_responses_and_their_changes_are_judged_alike() {
    let mut t = Tally::default();
    for r in valid_responses() {
        assert!(flatbuffers::root::<wfb::WorkerResponse>(&r).is_ok());
        mutations(&r, |m| agree_response(m, &mut t));
    }
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let len = rng.below(200);
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        agree_response(&buf, &mut t);
    }
    assert!(t.accepted > 1_000, "{t:?}");
    assert!(t.refused > 10_000, "{t:?}");
}

#[test]
fn a_refusal_reports_the_generic_verifiers_error() {
    let mut f = valid_frames().remove(1);
    let n = f.len();
    f.truncate(n - 3);
    let hand = hot::decode_process(&f).unwrap_err().to_string();
    let generic = Message::decode(&f).unwrap_err().to_string();
    assert_eq!(hand, generic);
}
