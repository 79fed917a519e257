//! The native engine in-process, with well-behaved fixtures only (a crashing fixture is never
//! loaded into the test process: those run in a real host-runner, see `host`).

use std::sync::Arc;

use workmanager_host_runner::engine::native::{NativeEngine, NativeError, NativeWorker};
use workmanager_host_runner::engine::{Engine, ResultStatus};
use workmanager_host_runner::ffi::callbacks::{GatewayFailure, outstanding_responses};

use crate::util::*;

const MAX_RESPONSE: usize = 1 << 20;

fn engine(rec: &Arc<Recorder>) -> NativeEngine {
    NativeEngine::new(rec.clone(), MAX_RESPONSE)
}

fn quiet() -> Arc<Recorder> {
    Recorder::new(|_| Err(GatewayFailure::Unavailable))
}

#[test]
fn c_echo_replies_with_the_event_and_sees_its_worker_id_only_while_loading() {
    let rec = quiet();
    let eng = engine(&rec);
    let w = eng.load(&spec("echo-c", &worker_c())).expect("load");
    let out = eng.process(&w, 1, &event("echo", b"hello"));
    assert_eq!(out.status, ResultStatus::Ok, "{out:?}");
    assert_eq!(out.code, 0);
    let r = response(&out.response);
    let ev = r.result_event.expect("result event");
    assert_eq!(ev.ty, "echo.reply");
    assert_eq!(ev.id, "msg-1");
    assert_eq!(ev.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(ev.extension("correlationid"), Some("corr-9"));
    // Set during dlopen (the constructor saw them) and restored afterwards.
    assert_eq!(ev.extension("loadworker"), Some("echo-c"));
    assert_eq!(ev.extension("loadtopic"), Some("topic.echo-c"));
    // That they are unset again after the load is checked in a real host (`host`), where no
    // other test loads at the same time.
    assert_eq!(r.error_message, None);
    eng.unload(w).expect("unload");
}

#[test]
fn cpp_echo_with_the_flatc_header_replies() {
    let rec = quiet();
    let eng = engine(&rec);
    let w = eng.load(&spec("echo-cpp", &echo_cpp())).expect("load");
    let out = eng.process(&w, 1, &event("anything", b"\x00\x01binary"));
    assert_eq!(out.status, ResultStatus::Ok, "{out:?}");
    let ev = response(&out.response).result_event.expect("result event");
    assert_eq!(ev.ty, "echo.reply");
    assert_eq!(ev.data.as_deref(), Some(&b"\x00\x01binary"[..]));
    assert_eq!(ev.extension("correlationid"), Some("corr-9"));
    assert_eq!(ev.extension("lang"), Some("cpp"));
    eng.unload(w).expect("unload");
}

#[test]
fn custom_export_names_load_and_a_missing_export_is_named() {
    let rec = quiet();
    let eng = engine(&rec);
    let so = worker_c_custom();
    let mut s = spec("custom", &so);
    s.entry_point = "HandleEvent".into();
    s.free_result = "Release".into();
    let w = eng.load(&s).expect("load with custom names");
    let out = eng.process(&w, 1, &event("echo", b"x"));
    assert_eq!(out.status, ResultStatus::Ok, "{out:?}");
    eng.unload(w).expect("unload");

    // The same library under the default names: Process is not exported.
    let err = eng
        .load(&spec("custom-default", &so))
        .err()
        .expect("load must fail");
    assert!(
        matches!(&err, NativeError::MissingExport { export, .. } if export == "Process"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"Process\""), "{err}");

    let mut s = spec("custom-free", &so);
    s.entry_point = "HandleEvent".into();
    let err = eng.load(&s).err().expect("load must fail");
    assert!(
        matches!(&err, NativeError::MissingExport { export, .. } if export == "FreeResult"),
        "{err:?}"
    );
}

#[test]
fn library_paths_cannot_leave_the_package() {
    let rec = quiet();
    let eng = engine(&rec);
    let so = worker_c();
    for bad in ["../../etc/passwd", "/etc/passwd", ""] {
        let mut s = spec("escape", &so);
        s.library_path = bad.into();
        let err = eng.load(&s).err().expect("must refuse");
        assert!(
            matches!(err, NativeError::LibraryPath { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn log_reaches_the_host_at_every_level_through_either_handle() {
    let rec = quiet();
    let eng = engine(&rec);
    let w = eng.load(&spec("logger", &worker_c())).expect("load");
    let out = eng.process(&w, 77, &event("log", b""));
    // The fixture returns 0 without a buffer: an invalid response (issue 4).
    assert_eq!(out.status, ResultStatus::InvalidResponse, "{out:?}");
    let logs = rec.logs();
    let levels: Vec<i32> = logs.iter().map(|l| l.level).collect();
    assert_eq!(levels, vec![0, 1, 2, 3, 4, 2], "{logs:?}");
    assert_eq!(logs[0].message, "level 0 from logger");
    assert_eq!(logs[5].message, "via host pointer");
    // The call was not marked (no crash::enter_call here), so msg_id is 0; worker.rs marks it.
    assert!(logs.iter().all(|l| l.worker_id == "logger"));
    assert!(!logs.iter().any(|l| l.message.contains("bogus")));
    eng.unload(w).expect("unload");
}

#[test]
fn gateway_call_round_trips_and_free_response_frees_exactly_once() {
    let rec = Recorder::new(|req| {
        let mut v = b"charged:".to_vec();
        v.extend_from_slice(req);
        Ok(v)
    });
    let eng = engine(&rec);
    let w = eng.load(&spec("gw", &worker_c())).expect("load");
    let before = outstanding_responses();
    let out = eng.process(&w, 5, &event("gateway", b"42"));
    assert_eq!(out.status, ResultStatus::Ok, "{out:?}");
    let ev = response(&out.response).result_event.expect("event");
    assert_eq!(
        String::from_utf8_lossy(ev.data.as_deref().unwrap_or_default()),
        "rc=0 len=10 body=charged:42"
    );
    assert_eq!(
        rec.calls.lock().unwrap().as_slice(),
        &[("billing".to_string(), "charge".to_string(), b"42".to_vec())]
    );
    // Freed once; the double free and the foreign pointer were ignored and logged.
    assert_eq!(outstanding_responses(), before);
    let ignored = rec
        .logs()
        .iter()
        .filter(|l| l.message.contains("free_response ignored"))
        .count();
    assert_eq!(ignored, 2, "{:?}", rec.logs());
    eng.unload(w).expect("unload");
}

#[test]
fn gateway_failures_reach_the_plugin_as_return_codes() {
    for (failure, rc) in [
        (GatewayFailure::Timeout, -2),
        (GatewayFailure::Unavailable, -3),
        (GatewayFailure::Status(404), 404),
    ] {
        let f = failure.clone();
        let rec = Recorder::new(move |_| Err(f.clone()));
        let eng = engine(&rec);
        let w = eng.load(&spec("gw-fail", &worker_c())).expect("load");
        let out = eng.process(&w, 5, &event("gateway", b"x"));
        let ev = response(&out.response).result_event.expect("event");
        assert_eq!(
            String::from_utf8_lossy(ev.data.as_deref().unwrap_or_default()),
            format!("rc={rc} len=0 body="),
            "{failure:?}"
        );
        eng.unload(w).expect("unload");
    }
}

#[test]
fn every_reply_shape_maps_to_its_status_and_free_result_runs_once_per_buffer() {
    let rec = quiet();
    let eng = engine(&rec);
    let w = eng.load(&spec("shapes", &worker_c())).expect("load");
    let cases: &[(&str, ResultStatus, i32)] = &[
        ("nonzero", ResultStatus::ProcessFailed, 7),
        ("nonzero-null", ResultStatus::ProcessFailed, 5),
        ("neglen", ResultStatus::InvalidResponse, 0),
        ("garbage", ResultStatus::InvalidResponse, 0),
        ("huge", ResultStatus::InvalidResponse, 0),
        ("nothing", ResultStatus::InvalidResponse, 0),
        ("both", ResultStatus::Ok, 0),
        ("error", ResultStatus::Ok, 0),
        ("echo", ResultStatus::Ok, 0),
    ];
    for (ty, status, code) in cases {
        let out = eng.process(&w, 1, &event(ty, b"d"));
        assert_eq!((out.status, out.code), (*status, *code), "{ty}: {out:?}");
        if *status != ResultStatus::Ok {
            assert!(out.response.is_empty(), "{ty}");
        }
        if *status == ResultStatus::InvalidResponse || *status == ResultStatus::ProcessFailed {
            assert!(!out.error.is_empty(), "{ty}");
        }
        match *ty {
            "both" => {
                let r = response(&out.response);
                assert!(r.result_event.is_some());
                assert_eq!(r.error_message.as_deref(), Some("partial failure"));
            }
            "error" => {
                let r = response(&out.response);
                assert!(r.result_event.is_none());
                assert_eq!(r.error_message.as_deref(), Some("worker says no"));
            }
            _ => {}
        }
    }
    let out = eng.process(&w, 2, &event("count", b""));
    assert_eq!(out.status, ResultStatus::InvalidResponse);
    let line = rec.logs().last().expect("count log").message.clone();
    // Buffers handed out: nonzero, neglen, garbage, huge, both, error, echo = 7.
    assert_eq!(line, "frees=7 buffers=7 calls=10", "{line}");
    eng.unload(w).expect("unload");
}

#[test]
fn two_versions_with_the_same_soname_load_side_by_side() {
    let rec = quiet();
    let eng = engine(&rec);
    let v1 = eng.load(&spec("side-1", &worker_c_version(1))).expect("v1");
    let v2 = eng.load(&spec("side-2", &worker_c_version(2))).expect("v2");
    let data = |w: &NativeWorker| {
        let out = eng.process(w, 1, &event("version", b""));
        response(&out.response)
            .result_event
            .and_then(|e| e.data)
            .expect("data")
    };
    assert_eq!(data(&v1), b"1");
    assert_eq!(data(&v2), b"2");
    eng.unload(v1).expect("unload v1");
    assert_eq!(data(&v2), b"2", "v2 keeps working after v1 is gone");
    eng.unload(v2).expect("unload v2");
}

#[test]
fn unload_removes_the_library_copy_from_the_process() {
    let rec = quiet();
    let eng = engine(&rec);
    let id = "maps-check-7f3a";
    let w = eng.load(&spec(id, &worker_c())).expect("load");
    let maps = || std::fs::read_to_string("/proc/self/maps").expect("maps");
    assert!(maps().contains(&format!("memfd:wm:{id}")));
    eng.unload(w).expect("unload");
    assert!(!maps().contains(&format!("memfd:wm:{id}")));
}
