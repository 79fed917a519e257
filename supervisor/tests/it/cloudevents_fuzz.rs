//! A bounded fuzz test of the CloudEvents HTTP parsers (structured, batch, binary) that runs on
//! stable Rust: `cargo fuzz` needs a nightly toolchain, which this project's machines do not
//! have. The seed corpus is `supervisor/tests/fuzz/cloudevents/` (see its README); proptest
//! mutates every seed (byte flips, truncation, splices, inserted bytes) and also feeds random
//! bytes in each mode. `WM_FUZZ_CASES` sets the number of cases per mode (default 3000).
//!
//! The properties: no parser panics whatever the input; an accepted event is valid and survives
//! a structured-JSON round trip; a batch never yields more events than its limit.

use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use wm_shared::CloudEvent;
use wm_supervisor::api::topics::parse_events;

const MAX_BATCH: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Structured,
    Batch,
    Binary,
}

fn corpus() -> Vec<(Mode, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/cloudevents");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mode = if name.ends_with(".batch.json") {
            Mode::Batch
        } else if name.ends_with(".json") {
            Mode::Structured
        } else if name.ends_with(".binary") {
            Mode::Binary
        } else {
            continue;
        };
        out.push((mode, std::fs::read(&path).unwrap()));
    }
    assert!(
        out.len() >= 6,
        "the seed corpus is missing: {}",
        dir.display()
    );
    out
}

/// Splits a binary-mode input into headers and body (see the corpus README).
fn binary_request(input: &[u8]) -> (HeaderMap, Vec<u8>) {
    let split = input
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(input.len());
    let mut headers = HeaderMap::new();
    for line in input[..split].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let body = input.get(split + 2..).unwrap_or_default().to_vec();
    (headers, body)
}

/// Parses `input` in `mode` and checks the properties; returns whether it was accepted.
fn run(mode: Mode, input: &[u8]) -> bool {
    let (headers, body) = match mode {
        Mode::Structured | Mode::Batch => {
            let mut h = HeaderMap::new();
            let ct = if matches!(mode, Mode::Batch) {
                "application/cloudevents-batch+json"
            } else {
                "application/cloudevents+json"
            };
            h.insert("content-type", HeaderValue::from_static(ct));
            (h, input.to_vec())
        }
        Mode::Binary => binary_request(input),
    };
    let Ok(events) = parse_events(&headers, &body, MAX_BATCH) else {
        return false;
    };
    {
        assert!(events.len() <= MAX_BATCH.max(1));
        for ev in events {
            ev.validate().expect("an accepted event is valid");
            let again = CloudEvent::from_json_value(&ev.to_json_value())
                .expect("an accepted event survives a round trip");
            assert_eq!(again.id, ev.id);
            assert_eq!(again.ty, ev.ty);
            assert_eq!(again.data, ev.data);
        }
    }
    true
}

fn cases() -> u32 {
    std::env::var("WM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn the_seed_corpus_parses() {
    for (mode, input) in corpus() {
        assert!(
            run(mode, &input),
            "seed {mode:?} is refused: {}",
            String::from_utf8_lossy(&input)
        );
    }
}

/// One mutation of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize, usize),
}

fn apply(seed: &[u8], other: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !b.is_empty() {
                    b[i % n] ^= x;
                }
            }
            Edit::Truncate(i) => b.truncate(i % n),
            Edit::Insert(i, bytes) => {
                let at = (i % n).min(b.len());
                b.splice(at..at, bytes.iter().copied());
            }
            Edit::Splice(i, j, len) => {
                if !other.is_empty() {
                    let from = j % other.len();
                    let to = (from + len % 64).min(other.len());
                    let at = (i % n).min(b.len());
                    b.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
    }
    b
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to the parsers: JSON punctuation, quotes, escapes, %, newlines.
    let interesting = prop::sample::select(b"{}[]\":,\\%\n\r\x00\xff0123456789eE+-.ntfu ".to_vec());
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), prop::collection::vec(interesting, 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(i, j, l)| Edit::Splice(i, j, l)),
    ]
}

#[test]
fn mutated_seeds_never_panic_a_parser() {
    let seeds = corpus();
    let n = seeds.len();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(0..n, 0..n, prop::collection::vec(edit(), 1..6)),
            |(a, b, edits)| {
                let (mode, seed) = &seeds[a];
                let input = apply(seed, &seeds[b].1, &edits);
                let _accepted = run(*mode, &input);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn random_bytes_never_panic_a_parser() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |input| {
            for mode in [Mode::Structured, Mode::Batch, Mode::Binary] {
                let _accepted = run(mode, &input);
            }
            Ok(())
        })
        .unwrap();
}
