//! The worker C ABI (`schemas/virtufin_worker_api_c.h`) and the flatc C++ header
//! (`schemas/virtufin_worker_api_fb.h`) against the Rust wire format in `wm_shared`.
//!
//! Real compilers build the test programs in `tests/fixtures/native/cabi_*.c` and
//! `tests/fixtures/cpp/cabi_*.cpp`; the programs speak the small record/frame format of
//! `cabi_tlv.h` on stdin/stdout, so one process handles a whole batch of cases.
//!
//! What is proved here:
//! - the header compiles warning-free as C11 and C++17 with `-pedantic`, exports `Process` and
//!   `FreeResult` under `-fvisibility=hidden`, and the seed's C and C++ examples build against it;
//! - every C builder's output is accepted by the Rust verifier and decodes field by field to what
//!   was asked for, and every Rust-built event reads back field by field through the C reader
//!   (fixed edge cases and a few hundred seeded random events);
//! - the same both ways for the flatc C++ header;
//! - the C reader refuses a fixed set of hostile buffers with the documented error codes, and a
//!   seeded fuzz driver runs it over truncated and mutated buffers under ASan + UBSan and under
//!   valgrind without a single invalid read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use wm_shared::generated::worker_api::virtufin::worker::flat_buffers as fb;
use wm_shared::{CloudEvent, WorkerResponse};
use wm_testkit::native::{Build, Lang};
use wm_testkit::workspace_root;

const SANITIZE: &[&str] = &[
    "-pedantic",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

/// A watchdog for every child: a hung test program fails the test instead of hanging it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

fn interop() -> PathBuf {
    Build::program("cabi_interop", Lang::C, &["cabi_interop.c"])
        .flags(SANITIZE)
        .build()
}

fn flatc_prog() -> PathBuf {
    Build::program(
        "cabi_flatc",
        Lang::Cpp,
        &["cabi_flatc.cpp", "cabi_seed_example.cpp"],
    )
    .flags(SANITIZE)
    .build()
}

/// Runs `cmd` with `input` on stdin, collecting stdout and stderr, killed after CHILD_TIMEOUT.
fn run_cmd(mut cmd: Command, input: Vec<u8>) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let writer = std::thread::spawn(move || {
        // A child that exits early closes the pipe; its exit status tells the story.
        let _ = stdin.write_all(&input);
    });
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {CHILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().expect("stdin writer");
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Runs `prog args` and insists on exit status 0.
fn run(prog: &Path, args: &[&str], input: Vec<u8>) -> Vec<u8> {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let out = run_cmd(cmd, input);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}",
        prog.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---- the record / frame stream format of cabi_tlv.h ----

fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_record(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_frame(out, bytes);
}

fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        v.push(bytes[4..4 + n].to_vec());
        bytes = &bytes[4 + n..];
    }
    v
}

type Records = Vec<(char, Vec<u8>)>;

fn records(mut bytes: &[u8]) -> Records {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let tag = bytes[0] as char;
        let n = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        v.push((tag, bytes[5..5 + n].to_vec()));
        bytes = &bytes[5 + n..];
    }
    v
}

/// A build request: an event's attributes (optional as a whole) and an error message.
struct Spec {
    event: Option<CloudEvent>,
    /// Send `specversion`; when false the builder's default ("1.0") applies.
    with_specversion: bool,
    error: Option<String>,
}

fn encode_specs(specs: &[Spec]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in specs {
        if let Some(e) = &s.event {
            put_record(&mut out, b'i', e.id.as_bytes());
            put_record(&mut out, b't', e.ty.as_bytes());
            put_record(&mut out, b's', e.source.as_bytes());
            if s.with_specversion {
                put_record(&mut out, b'v', e.specversion.as_bytes());
            }
            for (tag, v) in [
                (b'c', &e.datacontenttype),
                (b'a', &e.dataschema),
                (b'j', &e.subject),
                (b'm', &e.time),
            ] {
                if let Some(v) = v {
                    put_record(&mut out, tag, v.as_bytes());
                }
            }
            if let Some(d) = &e.data {
                put_record(&mut out, b'd', d);
            }
            for (n, v) in e.extensions() {
                put_record(&mut out, b'n', n.as_bytes());
                put_record(&mut out, b'x', v.as_bytes());
            }
        }
        if let Some(err) = &s.error {
            put_record(&mut out, b'e', err.as_bytes());
        }
        put_record(&mut out, b'.', b"");
    }
    out
}

/// What `cabi_interop read` / `cabi_flatc read` must print for an event Rust encoded.
fn expected_records(e: &CloudEvent) -> Records {
    let mut v: Records = vec![
        ('i', e.id.clone().into_bytes()),
        ('t', e.ty.clone().into_bytes()),
        ('s', e.source.clone().into_bytes()),
        ('v', e.specversion.clone().into_bytes()),
    ];
    for (tag, o) in [
        ('c', &e.datacontenttype),
        ('a', &e.dataschema),
        ('j', &e.subject),
        ('m', &e.time),
    ] {
        if let Some(s) = o {
            v.push((tag, s.clone().into_bytes()));
        }
    }
    if let Some(d) = &e.data {
        v.push(('d', d.clone()));
    }
    v.push(('k', (e.extensions().len() as i32).to_le_bytes().to_vec()));
    for (n, x) in e.extensions() {
        v.push(('n', n.clone().into_bytes()));
        v.push(('x', x.clone().into_bytes()));
        let first = e.extension(n).unwrap_or_default();
        v.push(('l', first.as_bytes().to_vec()));
    }
    v
}

// ---- events to test with ----

/// xorshift64*: reproducible cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(2685821657736338717)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn string(&mut self, allow_nul: bool) -> String {
        const PIECES: &[&str] = &[
            "a",
            "com.example.",
            " ",
            "é",
            "日本語",
            "🦀",
            "\u{10FFFF}",
            "\u{FFFD}",
            "\"q\"",
            "\\",
            "urn:x",
            "\n",
        ];
        let mut s = String::new();
        for _ in 0..self.below(8) {
            if allow_nul && self.below(10) == 0 {
                s.push('\0');
            } else {
                s.push_str(PIECES[self.below(PIECES.len())]);
            }
        }
        s
    }
    fn opt_string(&mut self, allow_nul: bool) -> Option<String> {
        (self.below(2) == 0).then(|| self.string(allow_nul))
    }
    /// A valid extension name: 1-20 of [a-z0-9], starting with `x` so it is never reserved.
    fn ext_name(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        std::iter::once('x')
            .chain((0..self.below(20)).map(|_| ALPHABET[self.below(ALPHABET.len())] as char))
            .collect()
    }
    fn event(&mut self, allow_nul: bool) -> CloudEvent {
        let mut e = CloudEvent::new(
            self.string(allow_nul),
            self.string(allow_nul),
            self.string(allow_nul),
        );
        if self.below(4) == 0 {
            e.specversion = self.string(allow_nul);
        }
        e.datacontenttype = self.opt_string(allow_nul);
        e.dataschema = self.opt_string(allow_nul);
        e.subject = self.opt_string(allow_nul);
        e.time = self.opt_string(allow_nul);
        e.data = match self.below(4) {
            0 => None,
            1 => Some(Vec::new()),
            _ => Some(
                (0..self.below(300))
                    .map(|_| self.next() as u8)
                    .collect::<Vec<u8>>(),
            ),
        };
        let n = [0, 0, 1, 2, 3, 7, 40][self.below(7)];
        for _ in 0..n {
            let name = if self.below(8) == 0 {
                "correlationid".to_string()
            } else {
                self.ext_name()
            };
            let value = self.string(allow_nul);
            e.set_extension(name, value).expect("valid extension name");
        }
        e
    }
}

/// Hand-picked edge cases: empty and binary data with NULs, unicode, 0 and many extensions,
/// `correlationid` set last (the model moves it first).
fn edge_events(allow_nul: bool) -> Vec<CloudEvent> {
    let mut v = Vec::new();
    v.push(CloudEvent::new("", "", ""));
    let mut e = CloudEvent::new("id-1", "com.example.ping", "urn:test");
    e.data = Some(vec![0, 0, 1, 0, 0xff, 0xfe, b'{', 0, b'}', 0]);
    e.datacontenttype = Some("application/octet-stream".into());
    v.push(e);
    let mut e = CloudEvent::new("ünïcødé-🦀", "日本語.type", "urn:ñ");
    e.subject = Some("sübject ✓".into());
    e.time = Some("2026-11-21T10:00:00Z".into());
    e.dataschema = Some("https://example.com/schema/é".into());
    e.data = Some(Vec::new());
    e.set_extension("tenant", "t1 ✓").unwrap();
    e.set_extension("correlationid", "c-42").unwrap();
    v.push(e);
    let mut e = CloudEvent::new("many", "t", "s");
    for i in 0..200 {
        e.set_extension(format!("ext{i}"), format!("value {i} é"))
            .unwrap();
    }
    e.set_extension("correlationid", "last-set-first-out")
        .unwrap();
    v.push(e);
    let mut e = CloudEvent::new("big", "t", "s");
    e.data = Some((0..70_000u32).map(|i| (i * 7 % 256) as u8).collect());
    e.set_extension("empty", "").unwrap();
    v.push(e);
    if allow_nul {
        let mut e = CloudEvent::new("nul\0inside", "t\0", "\0");
        e.subject = Some("a\0b".into());
        e.set_extension("k", "v\0w").unwrap();
        v.push(e);
    }
    v
}

fn header_code(name: &str) -> i32 {
    let header = std::fs::read_to_string(workspace_root().join("schemas/virtufin_worker_api_c.h"))
        .expect("read the C header");
    let prefix = format!("#define {name} ");
    let line = header
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} is not defined in the header"));
    line[prefix.len()..]
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---- compilation ----

#[test]
fn header_compiles_cleanly_as_c11_and_cpp17_and_exports_the_entry_points() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = workspace_root().join("schemas");
    let worker = r#"
#include "virtufin_worker_api_c.h"
int32_t Process(const VirtufinHost* host, const uint8_t* in_buf, int32_t in_len,
                uint8_t** out_buf, int32_t* out_len) {
    VirtufinEvent ev;
    if (virtufin_event_open(&ev, in_buf, in_len) != VIRTUFIN_FB_OK) {
        virtufin_log(host, VIRTUFIN_LOG_WARN, "bad input");
        *out_buf = virtufin_build_error_response("bad input", out_len);
        return 0;
    }
    *out_buf = build_minimal_worker_response("ok", "t", "s", out_len);
    return *out_buf == NULL;
}
void FreeResult(uint8_t* result) { free(result); }
int not_exported(void) { return 1; }
"#;
    for (compiler, std, file, extra) in [
        ("gcc", "-std=c11", "w.c", ""),
        (
            "g++",
            "-std=c++17",
            "w.cpp",
            "#include \"virtufin_worker_api_fb.h\"\n",
        ),
    ] {
        let src = dir.path().join(file);
        std::fs::write(&src, format!("{worker}{extra}")).unwrap();
        let so = dir.path().join(format!("lib{file}.so"));
        let mut cmd = Command::new(compiler);
        cmd.args([
            std,
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O2",
            "-fPIC",
            "-shared",
            "-fvisibility=hidden",
        ])
        .arg("-I")
        .arg(&schemas)
        .arg("-o")
        .arg(&so)
        .arg(&src);
        let out = run_cmd(cmd, Vec::new());
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{compiler} {std}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut nm = Command::new("nm");
        nm.args(["-D", "--defined-only"]).arg(&so);
        let out = run_cmd(nm, Vec::new());
        let syms = String::from_utf8_lossy(&out.stdout);
        let exported: Vec<&str> = syms
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert!(exported.contains(&"Process"), "{compiler}: {syms}");
        assert!(exported.contains(&"FreeResult"), "{compiler}: {syms}");
        assert!(!syms.contains("not_exported"), "{compiler}: {syms}");
    }
}

#[test]
fn c_selftest_checks_arguments_utf8_rules_and_host_callbacks() {
    let out = run(&interop(), &["selftest"], Vec::new());
    let text = String::from_utf8_lossy(&out);
    let n: u32 = text
        .trim()
        .strip_prefix("selftest ok: ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected selftest output: {text}"));
    assert!(n >= 80, "selftest ran only {n} checks");
}

// ---- C builders -> Rust ----

fn check_c_build(mode: &str, specs: &[Spec], expected: &[Option<WorkerResponse>]) {
    let out = frames(&run(&interop(), &[mode], encode_specs(specs)));
    assert_eq!(out.len(), specs.len(), "{mode}: one frame per spec");
    for (i, (bytes, want)) in out.iter().zip(expected).enumerate() {
        match want {
            None => assert!(bytes.is_empty(), "{mode} case {i}: builder should refuse"),
            Some(want) => {
                assert_eq!(bytes.len() % 4, 0, "{mode} case {i}: size not 4-aligned");
                let got = WorkerResponse::from_flatbuffer(bytes)
                    .unwrap_or_else(|e| panic!("{mode} case {i}: Rust refuses C output: {e}"));
                assert_eq!(&got, want, "{mode} case {i}");
            }
        }
    }
}

fn no_nul_events() -> Vec<CloudEvent> {
    let mut rng = Rng(0x5eed_c0de);
    let mut v = edge_events(false);
    v.extend((0..250).map(|_| rng.event(false)));
    v
}

#[test]
fn c_builders_produce_worker_responses_rust_reads_field_by_field() {
    let events = no_nul_events();

    // build_minimal_worker_response(id, type, source): specversion "1.0" and nothing else.
    let specs: Vec<Spec> = events
        .iter()
        .map(|e| Spec {
            event: Some(e.clone()),
            with_specversion: true,
            error: None,
        })
        .collect();
    let expected: Vec<_> = events
        .iter()
        .map(|e| {
            Some(WorkerResponse {
                result_event: Some(CloudEvent::new(&e.id, &e.ty, &e.source)),
                error_message: None,
            })
        })
        .collect();
    check_c_build("build-minimal", &specs, &expected);

    // The full builder, with and without an error message, specversion sent or defaulted.
    let mut rng = Rng(42);
    let mut specs = Vec::new();
    let mut expected = Vec::new();
    for e in &events {
        let with_specversion = e.specversion != "1.0" || rng.below(2) == 0;
        let error = (rng.below(3) == 0).then(|| rng.string(false));
        specs.push(Spec {
            event: Some(e.clone()),
            with_specversion,
            error: error.clone(),
        });
        expected.push(Some(WorkerResponse {
            result_event: Some(e.clone()),
            error_message: error,
        }));
    }
    // No result event: error only, and neither (an empty response).
    specs.push(Spec {
        event: None,
        with_specversion: false,
        error: Some("only an error ✗".into()),
    });
    expected.push(Some(WorkerResponse {
        result_event: None,
        error_message: Some("only an error ✗".into()),
    }));
    specs.push(Spec {
        event: None,
        with_specversion: false,
        error: None,
    });
    expected.push(Some(WorkerResponse::default()));
    check_c_build("build-response", &specs, &expected);

    // The error-response builder; NULL message refused.
    let specs = vec![
        Spec {
            event: None,
            with_specversion: false,
            error: Some("worker failed: 日本".into()),
        },
        Spec {
            event: None,
            with_specversion: false,
            error: Some(String::new()),
        },
        Spec {
            event: None,
            with_specversion: false,
            error: None,
        },
    ];
    let expected = vec![
        Some(WorkerResponse {
            result_event: None,
            error_message: Some("worker failed: 日本".into()),
        }),
        Some(WorkerResponse {
            result_event: None,
            error_message: Some(String::new()),
        }),
        None,
    ];
    check_c_build("build-error", &specs, &expected);
}

#[test]
fn c_built_cloud_events_are_read_by_rust_and_by_the_flatc_cpp_verifier() {
    let events = no_nul_events();
    let specs: Vec<Spec> = events
        .iter()
        .map(|e| Spec {
            event: Some(e.clone()),
            with_specversion: true,
            error: None,
        })
        .collect();
    let built = frames(&run(&interop(), &["build-event"], encode_specs(&specs)));
    assert_eq!(built.len(), events.len());
    let mut batch = Vec::new();
    for (i, (bytes, want)) in built.iter().zip(&events).enumerate() {
        let got = CloudEvent::from_flatbuffer(bytes)
            .unwrap_or_else(|e| panic!("case {i}: Rust refuses the C-built event: {e}"));
        assert_eq!(&got, want, "case {i}");
        put_frame(&mut batch, bytes);
    }
    let read = frames(&run(&flatc_prog(), &["read"], batch));
    for (i, (out, want)) in read.iter().zip(&events).enumerate() {
        assert_eq!(records(out), expected_records(want), "case {i}");
    }
}

// ---- Rust -> C reader ----

#[test]
fn rust_events_are_read_by_the_c_reader_field_by_field() {
    let mut rng = Rng(7);
    let mut events = edge_events(true);
    events.extend((0..300).map(|_| rng.event(true)));
    let mut batch = Vec::new();
    for e in &events {
        put_frame(&mut batch, &e.to_flatbuffer());
    }
    let out = frames(&run(&interop(), &["read"], batch));
    assert_eq!(out.len(), events.len());
    for (i, (got, want)) in out.iter().zip(&events).enumerate() {
        assert_eq!(records(got), expected_records(want), "case {i}: {want:?}");
    }
    // correlationid comes first whatever order it was set in (the seed's rule).
    let many = records(&out[3]);
    assert_eq!(many[5], ('n', b"correlationid".to_vec()));
    assert_eq!(many[6], ('x', b"last-set-first-out".to_vec()));
}

// ---- the flatc C++ header ----

#[test]
fn cpp_flatc_header_and_rust_agree_both_ways() {
    let mut rng = Rng(99);
    let mut events = edge_events(true);
    events.extend((0..150).map(|_| rng.event(true)));
    let prog = flatc_prog();

    // C++ builds, Rust reads.
    let specs: Vec<Spec> = events
        .iter()
        .map(|e| Spec {
            event: Some(e.clone()),
            with_specversion: true,
            error: None,
        })
        .collect();
    let built = frames(&run(&prog, &["build-event"], encode_specs(&specs)));
    assert_eq!(built.len(), events.len());
    for (i, (bytes, want)) in built.iter().zip(&events).enumerate() {
        let got = CloudEvent::from_flatbuffer(bytes)
            .unwrap_or_else(|e| panic!("case {i}: Rust refuses the C++-built event: {e}"));
        assert_eq!(&got, want, "case {i}");
    }
    let specs: Vec<Spec> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Spec {
            event: (i % 5 != 4).then(|| e.clone()),
            with_specversion: true,
            error: (i % 3 == 0).then(|| format!("error {i} ✗")),
        })
        .collect();
    let built = frames(&run(&prog, &["build-response"], encode_specs(&specs)));
    for (i, (bytes, spec)) in built.iter().zip(&specs).enumerate() {
        let got = WorkerResponse::from_flatbuffer(bytes)
            .unwrap_or_else(|e| panic!("case {i}: Rust refuses the C++-built response: {e}"));
        let want = WorkerResponse {
            result_event: spec.event.clone(),
            error_message: spec.error.clone(),
        };
        assert_eq!(got, want, "case {i}");
    }

    // Rust builds, the generated verifier and accessors read.
    let mut batch = Vec::new();
    for e in &events {
        put_frame(&mut batch, &e.to_flatbuffer());
    }
    let read = frames(&run(&prog, &["read"], batch));
    assert_eq!(read.len(), events.len());
    for (i, (got, want)) in read.iter().zip(&events).enumerate() {
        assert_eq!(records(got), expected_records(want), "case {i}");
    }
}

#[test]
fn the_seed_examples_build_and_their_replies_decode_in_rust() {
    let reply = |id: &str| WorkerResponse {
        result_event: Some(CloudEvent::new(
            id,
            "com.example.myworker.reply",
            "urn:com.example.myworker",
        )),
        error_message: None,
    };
    // C++ "Option B", unchanged, against the flatc header.
    let out = frames(&run(&flatc_prog(), &["seed"], Vec::new()));
    assert_eq!(out.len(), 1);
    assert_eq!(
        WorkerResponse::from_flatbuffer(&out[0]).unwrap(),
        reply("reply-id")
    );
    // The pure-C example, unchanged, against the C header alone.
    let prog = Build::program(
        "cabi_seed_c",
        Lang::C,
        &["cabi_seed_example.c", "cabi_seed_main.c"],
    )
    .flags(SANITIZE)
    .build();
    let out = frames(&run(&prog, &[], Vec::new()));
    assert_eq!(out.len(), 1);
    assert_eq!(
        WorkerResponse::from_flatbuffer(&out[0]).unwrap(),
        reply("ok")
    );
}

// ---- hostile buffers ----

fn le32(b: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap())
}
fn le16(b: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes(b[pos..pos + 2].try_into().unwrap())
}
fn set32(b: &mut [u8], pos: usize, v: u32) {
    b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
}
fn set16(b: &mut [u8], pos: usize, v: u16) {
    b[pos..pos + 2].copy_from_slice(&v.to_le_bytes());
}
/// The vtable position of the table at `table`.
fn vtable(b: &[u8], table: usize) -> usize {
    (table as i64 - le32(b, table) as i32 as i64) as usize
}
/// The position of offset field `slot` of the table at `table`.
fn field(b: &[u8], table: usize, slot: usize) -> usize {
    table + le16(b, vtable(b, table) + 4 + 2 * slot) as usize
}
/// Where the offset field `slot` of the table at `table` points.
fn target(b: &[u8], table: usize, slot: usize) -> usize {
    let f = field(b, table, slot);
    f + le32(b, f) as usize
}

/// A valid FlatBuffer that repeats one big Extension table 100 times: fine for the Rust verifier,
/// over the C reader's visit limit.
fn shared_extension_bomb() -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let name = fbb.create_string("big");
    let value = fbb.create_string(&"v".repeat(2000));
    let ext = fb::Extension::create(
        &mut fbb,
        &fb::ExtensionArgs {
            name: Some(name),
            value: Some(value),
        },
    );
    let extensions = fbb.create_vector(&[ext; 100]);
    let id = fbb.create_string("i");
    let root = fb::CloudEvent::create(
        &mut fbb,
        &fb::CloudEventArgs {
            id: Some(id),
            extensions: Some(extensions),
            ..Default::default()
        },
    );
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

#[test]
fn c_reader_refuses_known_bad_buffers_with_the_expected_code() {
    let bounds = header_code("VIRTUFIN_FB_ERR_BOUNDS");
    let align = header_code("VIRTUFIN_FB_ERR_ALIGN");
    let vtable_err = header_code("VIRTUFIN_FB_ERR_VTABLE");
    let nul = header_code("VIRTUFIN_FB_ERR_NUL");
    let utf8 = header_code("VIRTUFIN_FB_ERR_UTF8");
    let limit = header_code("VIRTUFIN_FB_ERR_LIMIT");

    let mut base = CloudEvent::new("id-1", "com.example.t", "urn:s");
    base.data = Some(vec![0, 1, 2, 3, 4, 5, 6, 7]);
    base.set_extension("correlationid", "c").unwrap();
    base.set_extension("tenant", "t1").unwrap();
    let good = base.to_flatbuffer();
    let len = good.len();
    let root = le32(&good, 0) as usize;
    let vt = vtable(&good, root);
    let tsize = le16(&good, vt + 2);
    let id_field = field(&good, root, 0);
    let id_str = target(&good, root, 0);
    let id_len = le32(&good, id_str) as usize;
    let data_vec = target(&good, root, 8);
    let ext_vec = target(&good, root, 9);
    let ext0 = ext_vec + 4 + le32(&good, ext_vec + 4) as usize;
    let ext0_name = target(&good, ext0, 0);

    let m = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let bomb = shared_extension_bomb();
    assert!(
        CloudEvent::from_flatbuffer(&bomb).is_ok(),
        "the bomb is a valid FlatBuffer"
    );

    let cases: Vec<(&str, Vec<u8>, Option<i32>)> = vec![
        ("the valid buffer itself", good.clone(), None),
        ("empty", Vec::new(), Some(bounds)),
        ("three bytes", vec![4, 0, 0], Some(bounds)),
        (
            "root offset past the end",
            m(&|b| set32(b, 0, len as u32)),
            Some(bounds),
        ),
        (
            "root offset misaligned",
            m(&|b| set32(b, 0, root as u32 + 2)),
            Some(align),
        ),
        (
            "root offset huge",
            m(&|b| set32(b, 0, 0xFFFF_FFFC)),
            Some(bounds),
        ),
        (
            "vtable before the buffer",
            m(&|b| set32(b, root, root as u32 + 8)),
            Some(bounds),
        ),
        (
            "vtable after the buffer",
            m(&|b| set32(b, root, (-(len as i32)) as u32)),
            Some(bounds),
        ),
        ("vtable size odd", m(&|b| set16(b, vt, 5)), Some(vtable_err)),
        (
            "vtable size below 4",
            m(&|b| set16(b, vt, 2)),
            Some(vtable_err),
        ),
        (
            "vtable larger than the buffer",
            m(&|b| set16(b, vt, 0xFFFE)),
            Some(bounds),
        ),
        (
            "table size below 4",
            m(&|b| set16(b, vt + 2, 2)),
            Some(vtable_err),
        ),
        (
            "table larger than the buffer",
            m(&|b| set16(b, vt + 2, 0xFFFC)),
            Some(bounds),
        ),
        (
            "field outside its table",
            m(&|b| set16(b, vt + 4, tsize)),
            Some(vtable_err),
        ),
        ("field misaligned", m(&|b| set16(b, vt + 4, 6)), Some(align)),
        (
            "string offset past the end",
            m(&|b| set32(b, id_field, 0x7FFF_FFF0)),
            Some(bounds),
        ),
        (
            "string offset misaligned",
            m(&|b| {
                let v = le32(b, id_field);
                set32(b, id_field, v + 1)
            }),
            Some(align),
        ),
        (
            "string length past the end",
            m(&|b| set32(b, id_str, 0xFFFF_FFF0)),
            Some(bounds),
        ),
        (
            "string without its NUL",
            m(&|b| b[id_str + 4 + id_len] = b'A'),
            Some(nul),
        ),
        (
            "string truncated right before its NUL",
            good[..id_str + 4 + id_len].to_vec(),
            Some(nul),
        ),
        ("string not UTF-8", m(&|b| b[id_str + 4] = 0xFF), Some(utf8)),
        (
            "string with a UTF-16 surrogate",
            m(&|b| b[id_str + 4..id_str + 7].copy_from_slice(&[0xED, 0xA0, 0x80])),
            Some(utf8),
        ),
        (
            "data length past the end",
            m(&|b| set32(b, data_vec, 0x4000_0000)),
            Some(bounds),
        ),
        (
            "extension count past the end",
            m(&|b| set32(b, ext_vec, 0x1000_0000)),
            Some(bounds),
        ),
        (
            "extension entry pointing outside",
            m(&|b| set32(b, ext_vec + 4, 0x7FFF_FFF0)),
            Some(bounds),
        ),
        (
            "extension entry pointing at itself",
            m(&|b| set32(b, ext_vec + 4, 0)),
            Some(vtable_err),
        ),
        (
            "extension name without its NUL",
            m(&|b| {
                let n = le32(b, ext0_name) as usize;
                b[ext0_name + 4 + n] = b'A'
            }),
            Some(nul),
        ),
        ("one extension table shared 100 times", bomb, Some(limit)),
    ];
    let mut batch = Vec::new();
    for (_, bytes, _) in &cases {
        put_frame(&mut batch, bytes);
    }
    let out = frames(&run(&interop(), &["read"], batch));
    assert_eq!(out.len(), cases.len());
    for ((name, _, want), got) in cases.iter().zip(&out) {
        let recs = records(got);
        match want {
            None => assert_eq!(recs, expected_records(&base), "{name}"),
            Some(code) => assert_eq!(
                recs,
                vec![('E', code.to_le_bytes().to_vec())],
                "{name}: expected code {code}"
            ),
        }
    }
}

/// Valid CloudEvents to mutate: small and varied, so every mutation lands near a structure.
fn fuzz_seeds() -> Vec<u8> {
    let mut rng = Rng(0xf022);
    let mut seeds = Vec::new();
    let mut e = CloudEvent::new("id-1", "com.example.t", "urn:s");
    e.data = Some(vec![0, 1, 0, 255]);
    e.subject = Some("süb".into());
    e.set_extension("correlationid", "c-1").unwrap();
    e.set_extension("tenant", "t1").unwrap();
    put_frame(&mut seeds, &e.to_flatbuffer());
    put_frame(&mut seeds, &CloudEvent::new("", "", "").to_flatbuffer());
    for _ in 0..4 {
        let mut e = rng.event(true);
        if e.extensions().len() > 8 {
            e = CloudEvent::new("x", "y", "z");
        }
        if let Some(d) = &mut e.data {
            d.truncate(16);
        }
        put_frame(&mut seeds, &e.to_flatbuffer());
    }
    seeds
}

/// Parses `seeds=.. execs=.. ok=.. e-1=.. .. e-8=..` into name -> count.
fn fuzz_stats(out: &[u8]) -> std::collections::HashMap<String, u64> {
    String::from_utf8_lossy(out)
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn assert_fuzz_did_work(out: &[u8], min_execs: u64) {
    let stats = fuzz_stats(out);
    let get = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(get("seeds"), 8, "6 seeds from Rust + 2 from the C builder");
    assert!(get("execs") >= min_execs, "too few executions: {stats:?}");
    assert!(get("ok") > 0, "no mutated buffer was accepted: {stats:?}");
    for code in [
        "VIRTUFIN_FB_ERR_BOUNDS",
        "VIRTUFIN_FB_ERR_ALIGN",
        "VIRTUFIN_FB_ERR_VTABLE",
        "VIRTUFIN_FB_ERR_NUL",
        "VIRTUFIN_FB_ERR_UTF8",
    ] {
        let key = format!("e{}", header_code(code));
        assert!(get(&key) > 0, "{code} never seen: {stats:?}");
    }
}

#[test]
fn c_reader_survives_fuzzing_under_asan_and_ubsan() {
    let prog = Build::program("cabi_fuzz", Lang::C, &["cabi_fuzz.c"])
        .flags(SANITIZE)
        .build();
    let out = run(&prog, &["4000", "20261121"], fuzz_seeds());
    assert_fuzz_did_work(&out, 8 * 4000);
}

#[test]
fn c_reader_survives_fuzzing_under_valgrind() {
    let prog = Build::program("cabi_fuzz_plain", Lang::C, &["cabi_fuzz.c"])
        .flags(&["-pedantic"])
        .build();
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "-q",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
    ])
    .arg(&prog)
    .args(["300", "7"]);
    let out = run_cmd(cmd, fuzz_seeds());
    assert!(
        out.status.success(),
        "valgrind (installed by scripts/install-deps.sh) reports errors ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fuzz_did_work(&out.stdout, 8 * 300);
}

// ---- the worker-author guide ----

/// The fenced code block that follows `<!-- marker -->` in docs/native-workers.md.
fn guide_block(marker: &str) -> String {
    let guide = std::fs::read_to_string(workspace_root().join("docs/native-workers.md"))
        .expect("read docs/native-workers.md");
    let tag = format!("<!-- {marker} -->");
    let after = &guide[guide
        .find(&tag)
        .unwrap_or_else(|| panic!("{tag} missing from the guide"))..];
    let start = after.find("```").expect("a code block after the marker");
    let body = &after[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("\n```").expect("closing fence") + 1].to_string()
}

#[test]
fn the_guides_echo_worker_builds_echoes_and_packs_into_a_valid_nupkg() {
    use wm_shared::package::{self, EngineKind, Limits, Target};

    let dir = tempfile::tempdir().unwrap();
    let echo_src = dir.path().join("myworker.c");
    std::fs::write(&echo_src, guide_block("echo-example")).unwrap();

    // The guide says it compiles warning-free as C11 and as C++17.
    for (compiler, std, lang) in [("gcc", "-std=c11", "c"), ("g++", "-std=c++17", "c++")] {
        let mut cmd = Command::new(compiler);
        cmd.args(["-x", lang, std, "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(["-fsyntax-only", "-I"])
            .arg(workspace_root().join("schemas"))
            .arg(&echo_src);
        let res = run_cmd(cmd, Vec::new());
        assert!(
            res.status.success() && res.stderr.is_empty(),
            "{compiler}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }

    // Run the echo worker through a host-like driver, with ASan + UBSan.
    let prog = Build::program(
        "cabi_doc_echo",
        Lang::C,
        &[echo_src.to_str().unwrap(), "cabi_doc_driver.c"],
    )
    .flags(SANITIZE)
    .build();
    let mut input = CloudEvent::new("in-1", "com.example.ping", "urn:client");
    input.subject = Some("sub ✓".into());
    input.datacontenttype = Some("application/octet-stream".into());
    input.data = Some(vec![0, 1, 2, 0, 255]);
    input.set_extension("tenant", "t1").unwrap();
    input.set_extension("correlationid", "c-77").unwrap();
    let bare = CloudEvent::new("in-2", "t", "s");
    let mut batch = Vec::new();
    put_frame(&mut batch, &input.to_flatbuffer());
    put_frame(&mut batch, &bare.to_flatbuffer());
    put_frame(&mut batch, b"junk");
    let out = frames(&run(&prog, &[], batch));
    assert_eq!(out.len(), 3);

    let mut want = CloudEvent::new(
        "echo-reply",
        "com.example.echo.reply",
        "urn:com.example.echo",
    );
    want.subject = input.subject.clone();
    want.datacontenttype = input.datacontenttype.clone();
    want.data = input.data.clone();
    want.set_extension("correlationid", "c-77").unwrap();
    want.set_extension("tenant", "t1").unwrap();
    let got = WorkerResponse::from_flatbuffer(&out[0]).unwrap();
    assert_eq!(got.result_event.as_ref(), Some(&want));
    assert_eq!(got.error_message, None);
    assert_eq!(got.result_event.unwrap().extensions()[0].0, "correlationid");

    let got = WorkerResponse::from_flatbuffer(&out[1]).unwrap();
    let want = CloudEvent::new(
        "echo-reply",
        "com.example.echo.reply",
        "urn:com.example.echo",
    );
    assert_eq!(
        got.result_event,
        Some(want),
        "no data, subject or extensions to copy"
    );

    let got = WorkerResponse::from_flatbuffer(&out[2]).unwrap();
    assert_eq!(
        got,
        WorkerResponse {
            result_event: None,
            error_message: Some("echo: input is not a valid CloudEvent".into()),
        }
    );

    // The guide's nuspec and pack script give a package the daemon accepts.
    std::fs::copy(
        workspace_root().join("schemas/virtufin_worker_api_c.h"),
        dir.path().join("virtufin_worker_api_c.h"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Virtufin.Worker.MyWorker.nuspec"),
        guide_block("nuspec-example"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pack.sh"), guide_block("pack-script")).unwrap();
    let target = Target {
        rid: package::rid_for_arch(std::env::consts::ARCH),
        dotnet_major: None,
    };
    let mut cmd = Command::new("bash");
    cmd.arg("pack.sh").arg(&target.rid).current_dir(dir.path());
    let res = run_cmd(cmd, Vec::new());
    assert!(
        res.status.success(),
        "the guide's pack script failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let nupkg = std::fs::read(dir.path().join("worker.nupkg")).unwrap();
    let info = package::inspect(&nupkg, EngineKind::Native, &target, &Limits::default())
        .unwrap_or_else(|e| panic!("the guide's package is refused: {e}"));
    assert_eq!(
        info.library_path,
        format!("runtimes/{}/native/libmyworker.so", target.rid)
    );
    assert_eq!(info.library, "myworker");
    assert_eq!(
        (info.entry_point.as_str(), info.free_result.as_str()),
        ("Process", "FreeResult")
    );
}
