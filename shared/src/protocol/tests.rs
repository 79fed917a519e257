use proptest::prelude::*;

use super::*;

fn samples() -> Vec<Message> {
    vec![
        Message::Ready(Ready {
            pid: 4242,
            engine: EngineKind::DotNet,
            version: "0.1.0".into(),
            sandbox: "seccomp,no_new_privs".into(),
        }),
        Message::LoadWorker(LoadWorker {
            request_id: 7,
            worker_id: "w-1".into(),
            // Native is the schema default (schema_defaults_survive_a_round_trip).
            engine: EngineKind::Python,
            package_dir: "/var/lib/wm/pkgs/w-1".into(),
            library_path: "lib/libecho.so".into(),
            entry_point: "process".into(),
            free_result: "free_result".into(),
            topic: "orders".into(),
            config: vec![("a".into(), "1".into()), ("b".into(), "".into())],
            max_concurrency: 4,
            timeout_ms: 1500,
            lanes: vec![2, 5],
        }),
        Message::LoadResult(LoadResult {
            request_id: 7,
            worker_id: "w-1".into(),
            ok: false,
            error: "dlopen failed".into(),
        }),
        Message::UnloadWorker(UnloadWorker {
            request_id: 8,
            worker_id: "w-1".into(),
        }),
        Message::UnloadResult(UnloadResult {
            request_id: 8,
            worker_id: "w-1".into(),
            ok: true,
            error: String::new(),
        }),
        Message::Process(Process {
            msg_id: u64::MAX,
            worker_id: "w-1".into(),
            event: (0..=255).collect(),
        }),
        Message::ProcessResult(ProcessResult {
            msg_id: 99,
            worker_id: "w-1".into(),
            status: ResultStatus::WorkerException,
            code: -3,
            response: vec![1, 2, 3],
            error: "boom".into(),
            elapsed_ns: 12345,
        }),
        Message::Log(Log {
            worker_id: "w-1".into(),
            msg_id: 99,
            level: 3,
            message: "hello ünïcode".into(),
        }),
        Message::GatewayCall(GatewayCall {
            call_id: 5,
            worker_id: "w-1".into(),
            msg_id: 99,
            service: "kv".into(),
            method: "get".into(),
            payload: vec![0; 10],
        }),
        Message::GatewayReply(GatewayReply {
            call_id: 5,
            status: 0,
            payload: vec![9; 3],
            error: String::new(),
        }),
        Message::Ping { nonce: 1 },
        Message::Pong { nonce: 1 },
        Message::StatsRequest { request_id: 3 },
        Message::Stats(Stats {
            request_id: 3,
            rss_bytes: 1 << 30,
            threads: 12,
            in_flight: 2,
            workers: 3,
        }),
        Message::Shutdown { deadline_ms: 5000 },
    ]
}

#[test]
fn every_message_kind_round_trips() {
    let all = samples();
    assert_eq!(all.len(), 15, "one sample per union member");
    for m in all {
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), m, "{}", m.kind());
    }
}

#[test]
fn encode_into_reuses_a_builder() {
    let mut b = FlatBufferBuilder::new();
    for m in samples() {
        let bytes = m.encode_into(&mut b).to_vec();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }
}

#[test]
fn schema_defaults_survive_a_round_trip() {
    let m = Message::LoadWorker(LoadWorker {
        max_concurrency: 1,
        timeout_ms: 30000,
        ..Default::default()
    });
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);
}

#[test]
fn garbage_is_an_error() {
    for bad in [
        &b""[..],
        &[0u8; 3],
        &[0xffu8; 64],
        b"definitely not a flatbuffer",
    ] {
        assert!(
            matches!(Message::decode(bad), Err(ProtocolError::Invalid { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn a_frame_without_payload_is_an_unknown_kind() {
    let mut b = FlatBufferBuilder::new();
    let f = fb::Frame::create(
        &mut b,
        &fb::FrameArgs {
            payload_type: fb::Payload::NONE,
            payload: None,
        },
    );
    b.finish(f, None);
    let e = Message::decode(b.finished_data()).unwrap_err();
    assert!(matches!(e, ProtocolError::UnknownKind { kind: 0 }), "{e}");
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
    let f = fb::Frame::create(
        &mut b,
        &fb::FrameArgs {
            payload_type: fb::Payload::ProcessResult,
            payload: Some(t.as_union_value()),
        },
    );
    b.finish(f, None);
    let e = Message::decode(b.finished_data()).unwrap_err();
    assert!(
        matches!(e, ProtocolError::UnknownEnum { value: 77, .. }),
        "{e}"
    );
}

proptest! {
    /// Arbitrary bytes and arbitrary corruptions of valid frames never panic.
    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&data);
    }

    #[test]
    fn flipped_bytes_never_panic(i in 0usize..15, pos in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut bytes = samples()[i].encode();
        let p = pos.index(bytes.len());
        bytes[p] = v;
        let _ = Message::decode(&bytes);
    }
}
