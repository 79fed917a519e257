//! A regression guard that does not depend on the machine's noise: the instructions the host
//! executes per call (Process frame in -> frame loop -> hand-off -> plugin -> reply lane ->
//! ProcessResult frame out), counted by callgrind; and the same for a call through the worker
//! thread's own ring lane (Process frame in -> worker thread -> plugin -> frame out).
//!
//! The host runs under `valgrind --tool=callgrind` with `--no-spin` (waits sleep at once, so
//! no instruction is spent waiting: their number depends on timing, not on the code) and
//! `--no-seccomp` (valgrind makes system calls of its own). Two runs, with `FEW` and `MANY`
//! back-to-back calls; their difference divided by `MANY - FEW` is the per-call count, free of
//! start-up and shutdown. The recorded counts are in docs/benchmarks.md ("Callgrind guard");
//! the test fails when the count grows by more than 20%. Skipped, saying so, when valgrind is
//! not installed (scripts/install-deps.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use wm_shared::protocol::{Message, ResultStatus};

use crate::host::Host;
use crate::util::*;

const FEW: u64 = 50;
const MANY: u64 = 550;

/// Instructions per call recorded for the unoptimised (test) build (283.9-284.0k over three
/// runs before lanes; 291,053 with the hand-written verifier of `protocol::hot_verify`, whose
/// `is_ascii` is a plain byte loop when unoptimised), and for `--release` (21,064).
/// Re-measure with `cargo test -p workmanager-host-runner --test it callgrind -- --nocapture`
/// (add `--release` for the release records) when the path changes on purpose
/// (`WM_CALLGRIND_KEEP=<dir>` keeps the profiles), and update docs/benchmarks.md.
const RECORDED_DEBUG: u64 = 291_000;
/// Debug build, a call through the worker thread's lane (278,142 when first recorded; 283,096
/// with the hand-written verifier; docs/benchmarks.md).
const RECORDED_LANE_DEBUG: u64 = 283_000;
const RECORDED_RELEASE: u64 = 21_000;
/// Release build, a lane call (17,033 with the hand-written verifier, 15,933 after its two
/// refinements).
const RECORDED_LANE_RELEASE: u64 = 15_900;
/// Growth that fails the guard.
const TOLERANCE: f64 = 0.20;

fn valgrind() -> Option<PathBuf> {
    let out = Command::new("valgrind").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("valgrind"))
}

/// Total instructions (`Ir`) the host executed for `calls` echo calls.
/// Which ring the calls take: the control ring (frame loop -> queue -> worker thread) or a lane
/// of the worker's thread.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Control,
    Lane,
}

fn instructions(dir: &Path, calls: u64, path: Route) -> u64 {
    let tag = if path == Route::Lane {
        "lane"
    } else {
        "control"
    };
    let out_file = dir.join(format!("callgrind.{tag}.{calls}.out"));
    let out_arg = format!("--callgrind-out-file={}", out_file.display());
    let mut h = Host::spawn_wrapped(
        &["valgrind", "--tool=callgrind", "--quiet", &out_arg],
        "native",
        // Valgrind refuses any RLIMIT_NOFILE whose hard limit differs from its own (it keeps
        // some descriptors for itself); a huge value is lowered to exactly that by the host.
        &["--no-seccomp", "--no-spin", "--rlimit-nofile", "1048576"],
        &[],
    );
    let r = match path {
        Route::Control => h.load("echo", &worker_c()),
        Route::Lane => h.load_lanes("echo", &worker_c(), 1, &[0]),
    };
    assert!(r.ok, "{r:?}");
    for n in 1..=calls {
        let res = match path {
            Route::Control => h.call(n, "echo", "echo", b"ping"),
            Route::Lane => {
                h.process_on(0, n, "echo", "echo", b"ping");
                h.result(n)
            }
        };
        assert_eq!(res.status, ResultStatus::Ok, "{res:?}");
    }
    h.send(Message::Shutdown { deadline_ms: 5000 });
    let status = h.wait_exit();
    assert!(status.success(), "host under valgrind: {status:?}");
    let text = std::fs::read_to_string(&out_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", out_file.display()));
    // WM_CALLGRIND_KEEP=<dir>: keep the profiles for `callgrind_annotate` (where the
    // instructions of a call go, function by function).
    if let Some(keep) = std::env::var_os("WM_CALLGRIND_KEEP") {
        let to = Path::new(&keep).join(out_file.file_name().unwrap_or_default());
        std::fs::copy(&out_file, &to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", out_file.display(), to.display()));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {}", out_file.display()))
}

#[test]
fn callgrind_instructions_per_call_stay_within_20_percent_of_the_record() {
    guard(Route::Control, RECORDED_DEBUG, RECORDED_RELEASE);
}

/// The same guard for a call through the worker thread's own lane (no frame loop, no queue).
#[test]
fn callgrind_instructions_per_lane_call_stay_within_20_percent_of_the_record() {
    guard(Route::Lane, RECORDED_LANE_DEBUG, RECORDED_LANE_RELEASE);
}

fn guard(path: Route, recorded_debug: u64, recorded_release: u64) {
    if valgrind().is_none() {
        eprintln!(
            "SKIPPED: valgrind is not installed (scripts/install-deps.sh installs it); the \
             callgrind guard of the host's per-call path did not run"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let few = instructions(dir.path(), FEW, path);
    let many = instructions(dir.path(), MANY, path);
    let per_call = many.saturating_sub(few) / (MANY - FEW);
    let (profile, recorded) = if cfg!(debug_assertions) {
        ("debug", recorded_debug)
    } else {
        ("release", recorded_release)
    };
    let tag = if path == Route::Lane {
        "lane"
    } else {
        "control ring"
    };
    println!(
        "callgrind ({tag}): {per_call} instructions per call ({profile} build; recorded {recorded})"
    );
    assert!(per_call > 0, "{few} then {many} instructions");
    if recorded == 0 {
        println!("callgrind: no count recorded for the {profile} build; nothing to compare");
        return;
    }
    let limit = recorded as f64 * (1.0 + TOLERANCE);
    assert!(
        per_call as f64 <= limit,
        "the host's per-call path grew: {per_call} instructions per call, recorded {recorded} \
         ({profile} build), limit +{:.0}%; find what was added to the path (callgrind_annotate \
         on a run of this test), or re-record in this file and docs/benchmarks.md if the \
         growth is intended",
        TOLERANCE * 100.0
    );
}
