//! The `workmanager` command-line client against a real daemon (issue 18): every client
//! subcommand with table and JSON output, the exit codes of its failures, the token and the
//! Unix socket; `pack` -> `workers create` -> invoke round trips; dead-letter list and
//! requeue (counted and audited); the seed's quick-start layout accepted with a warning.
//!
//! One daemon serves most of this module (started once, shared through a `OnceLock`), so the
//! module adds a few seconds, not a daemon per check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use wm_testkit::daemon::{Daemon, DaemonOptions, workmanager_bin};
use wm_testkit::dotnet as dn;
use wm_testkit::native::{Build, Lang};
use wm_testkit::nupkg::Nupkg;

const WAIT: Duration = Duration::from_secs(40);

/// What a CLI run gave.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `workmanager ARGS` with only the given `WORKMANAGER_*` variables.
fn wm(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(workmanager_bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WORKMANAGER_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running workmanager");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The shared daemon: tokens on (so the client must send one), metrics public (for the
/// harness's own checks), a TCP and a Unix listener, fast retries.
struct Shared {
    d: Daemon,
    token: String,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

/// The shared daemon's pid, for [`stop_shared_daemon`].
static SHARED_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn stop_shared_daemon() {
    let pid = SHARED_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) with the pid of our own child; no memory is touched.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let created = wm(
            &["token", "create", "--name", "cli", "--scope", "admin"],
            &[],
        )
        .ok();
        let mut lines = created.stdout.lines();
        let token = lines.next().expect("token line").to_owned();
        let entry = lines
            .next()
            .and_then(|l| l.split('"').nth(1))
            .expect("config line")
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let sock = dir.path().join("api.sock");
        // The .NET engine's bridge next to host-runner, for the C# round trip.
        dn::engine_dir();
        let root = dn::dotnet_root();
        let d = Daemon::start(
            DaemonOptions::default()
                .env("DOTNET_ROOT", root.to_str().expect("utf-8 path"))
                .listen("127.0.0.1:0")
                .listen(&format!("unix:{}", sock.display()))
                .env("WORKMANAGER_API_TOKENS", &entry)
                .env("WORKMANAGER_METRICS_PUBLIC", "true")
                .env("WORKER_RETRY_ATTEMPTS", "1")
                .env("WORKER_RETRY_BASE_DELAY_MS", "10")
                // One runtime thread whatever the CPUs (the default on 2 vCPUs): the CLI flow
                // must not depend on a second thread to make progress.
                .env("RUNTIME_WORKER_THREADS", "1"),
        );
        // A static is never dropped: stop the daemon when the test process exits.
        if let Some(pid) = d.pid().and_then(|p| i32::try_from(p).ok()) {
            SHARED_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: registers a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_shared_daemon) };
        }
        Shared {
            d,
            token,
            sock,
            _dir: dir,
        }
    })
}

impl Shared {
    fn addr(&self) -> String {
        self.d.addr().to_string()
    }

    /// Runs the CLI against the shared daemon over TCP with the token.
    fn wm(&self, args: &[&str]) -> Out {
        wm(
            args,
            &[
                ("WORKMANAGER_ADDR", &self.addr()),
                ("WORKMANAGER_TOKEN", &self.token),
            ],
        )
    }
}

fn chaos_so() -> PathBuf {
    Build::plugin("chaos", Lang::C, &["chaos.c"]).build()
}

/// `workmanager pack` of the chaos fixture into `dir`.
fn pack_chaos(dir: &Path) -> PathBuf {
    let out = dir.join("chaos.nupkg");
    let so = chaos_so();
    let r = wm(
        &[
            "pack",
            "--id",
            "Chaos.Worker",
            "--native",
            so.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[],
    )
    .ok();
    let v = r.json();
    assert_eq!(v["library"], "chaos", "{v}");
    assert_eq!(v["libraryPath"], "runtimes/linux-x64/native/libchaos.so");
    out
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn workers_subcommands_drive_a_daemon_in_tables_and_json() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    let pkg = pack_chaos(dir.path());
    let pkg = pkg.to_str().unwrap();

    let created = s
        .wm(&[
            "workers", "create", "-p", pkg, "-t", "t.cli", "--tag", "team=a", "-o", "json",
        ])
        .ok()
        .json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tags"]["team"], "a");
    // Created, not started: an invoke is refused with the status and what to do.
    let early = s.wm(&["workers", "invoke", &id, "--data", "\"early\""]);
    assert_ne!(early.code, 0, "{early:?}");
    assert!(early.stderr.contains("start it first"), "{}", early.stderr);
    let started = s.wm(&["workers", "start", &id, "-o", "json"]).ok();
    assert!(started.stdout.contains("RUNNING"), "{}", started.stdout);

    // Tables for people: a header and the worker's row.
    let ls = s.wm(&["workers", "ls"]).ok();
    let mut lines = ls.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATUS") && header.contains("TOPIC"),
        "{header}"
    );
    let row = lines
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{}", ls.stdout));
    assert!(row.contains("RUNNING") && row.contains("t.cli"), "{row}");
    // JSON for scripts: the daemon's own shape.
    let ls = s.wm(&["workers", "ls", "-o", "json"]).ok().json();
    assert!(
        ls["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id.as_str())
    );
    let get = s.wm(&["workers", "get", &id]).ok();
    assert!(
        get.stdout.contains("status") && get.stdout.contains("RUNNING"),
        "{}",
        get.stdout
    );

    // invoke: the reply on stdout.
    let reply = s
        .wm(&[
            "workers",
            "invoke",
            &id,
            "--data",
            "\"hello\"",
            "--type",
            "t.cli",
        ])
        .ok()
        .json();
    assert_eq!(reply["type"], "t.cli.reply", "{reply}");

    // tags: set, delete, list.
    let tags = s
        .wm(&[
            "workers", "tags", &id, "env=prod", "--rm", "team", "-o", "json",
        ])
        .ok()
        .json();
    assert_eq!(tags["tags"], serde_json::json!({"env": "prod"}));
    let tags = s.wm(&["workers", "tags", &id]).ok();
    assert!(
        tags.stdout.contains("env") && tags.stdout.contains("prod"),
        "{}",
        tags.stdout
    );

    // reload: a new upload, two history entries.
    s.wm(&["workers", "reload", &id, "-p", pkg]).ok();
    let h = s.wm(&["workers", "history", &id, "-o", "json"]).ok().json();
    assert!(!h["entries"].as_array().unwrap().is_empty(), "{h}");

    // hosts and engines.
    let hosts = s.wm(&["hosts"]).ok();
    assert!(
        hosts.stdout.starts_with("ID") && hosts.stdout.contains("native"),
        "{}",
        hosts.stdout
    );
    let engines = s.wm(&["engines", "-o", "json"]).ok().json();
    assert!(
        engines["engines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mimeType"] == "application/x-native-dll")
    );

    // topics: publish and watch (replayed from the store, then it exits after -n events).
    let p = s
        .wm(&[
            "topics",
            "publish",
            "t.cli.notes",
            "--data",
            "{\"n\":1}",
            "--id",
            "note-1",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(p["accepted"], 1);
    let w = s
        .wm(&[
            "topics",
            "watch",
            "t.cli.notes",
            "--from-earliest",
            "-n",
            "1",
            "-o",
            "json",
        ])
        .ok();
    let line: Value = serde_json::from_str(w.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["event"]["id"], "note-1", "{line}");
    assert_eq!(line["seq"], p["seqs"][0]);

    // stop, rm; then the worker is gone: exit 3 and the daemon's words.
    let stop = s.wm(&["workers", "stop", &id]).ok();
    assert!(stop.stdout.contains("STOPPED"), "{}", stop.stdout);
    let stopped = s.wm(&["workers", "invoke", &id, "--data", "\"late\""]);
    assert_ne!(stopped.code, 0, "{stopped:?}");
    assert!(
        stopped.stderr.contains("is STOPPED; start it first"),
        "{}",
        stopped.stderr
    );
    s.wm(&["workers", "rm", &id]).ok();
    let gone = s.wm(&["workers", "get", &id]);
    assert_eq!(gone.code, 3, "{gone:?}");
    assert!(gone.stderr.contains("not_found"), "{}", gone.stderr);
}

#[test]
fn errors_have_exit_codes_and_say_what_to_do() {
    let s = shared();
    // No token: 4, and the hint names WORKMANAGER_TOKEN.
    let r = wm(&["workers", "ls"], &[("WORKMANAGER_ADDR", &s.addr())]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("WORKMANAGER_TOKEN"), "{}", r.stderr);
    let r = wm(
        &["hosts", "--server", &s.addr()],
        &[("WORKMANAGER_TOKEN", "not-a-known-token-0123")],
    );
    assert_eq!(r.code, 4, "{r:?}");
    // Nobody listening: 5.
    let r = wm(&["engines", "--server", "127.0.0.1:1"], &[]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot reach the daemon at http://127.0.0.1:1"),
        "{}",
        r.stderr
    );
    // Bad address: usage, 2.
    let r = wm(&["engines", "--server", "unix:"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    // An invalid package: 6 with every problem listed.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nupkg");
    std::fs::write(&bad, Nupkg::new().file("readme.txt", "x").build()).unwrap();
    let r = s.wm(&[
        "workers",
        "create",
        "-p",
        bad.to_str().unwrap(),
        "-t",
        "t.bad",
        "--mime-type",
        "application/x-native-dll",
    ]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("invalid_package"), "{}", r.stderr);
    let r = wm(&["inspect", bad.to_str().unwrap()], &[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("nuspec"), "{}", r.stderr);
    // The Unix socket: the peer is the local admin, no token needed.
    let sock = format!("unix:{}", s.sock.display());
    let r = wm(&["hosts", "-o", "json"], &[("WORKMANAGER_ADDR", &sock)]).ok();
    assert!(r.json()["hosts"].is_array());
}

#[test]
fn dead_letters_are_listed_and_requeued_counted_and_audited() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    let pkg = pack_chaos(dir.path());
    let id = s
        .wm(&[
            "workers",
            "create",
            "-p",
            pkg.to_str().unwrap(),
            "-t",
            "t.dl",
            "--start",
            "-o",
            "json",
        ])
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // "error" makes the chaos worker fail: 1 call + 1 retry, then a dead letter.
    let ev = dir.path().join("ev.json");
    std::fs::write(
        &ev,
        r#"{"specversion":"1.0","id":"poison-1","source":"urn:t","type":"t.dl","datacontenttype":"text/plain","data":"error"}"#,
    )
    .unwrap();
    s.wm(&["topics", "publish", "t.dl", "--event", ev.to_str().unwrap()])
        .ok();
    let mut listed = Value::Null;
    wait_until("the dead letter", || {
        listed = s
            .wm(&["dead-letters", "ls", "t.dl", "-o", "json"])
            .ok()
            .json();
        !listed["deadLetters"].as_array().unwrap().is_empty()
    });
    let dl = &listed["deadLetters"][0];
    assert_eq!(listed["topic"], "t.dl-dead");
    assert_eq!(dl["id"], "poison-1", "{dl}");
    assert_eq!(dl["originalTopic"], "t.dl");
    assert_eq!(dl["reason"], "worker_error", "{dl}");
    assert_eq!(dl["worker"], id.as_str());
    let seq = dl["seq"].as_u64().unwrap().to_string();
    let table = s.wm(&["dead-letters", "ls", "t.dl-dead"]).ok();
    assert!(
        table.stdout.contains("poison-1") && table.stdout.contains("worker_error"),
        "{}",
        table.stdout
    );

    // "Fix the worker" = stop it here, so the requeued event stays on its topic to be seen.
    s.wm(&["workers", "stop", &id]).ok();
    let r = s
        .wm(&[
            "dead-letters",
            "requeue",
            "t.dl",
            &seq,
            "999999",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(r["requeued"], 1, "{r}");
    assert_eq!(r["notFound"], serde_json::json!([999999]));
    let new_seq = r["events"][0]["newSeq"].as_u64().unwrap();
    let after = (new_seq - 1).to_string();
    let w = s
        .wm(&[
            "topics", "watch", "t.dl", "--after", &after, "-n", "1", "-o", "json",
        ])
        .ok();
    let line: Value = serde_json::from_str(w.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["event"]["id"], "poison-1");
    assert_eq!(line["event"]["data"], "error");
    assert!(
        line["event"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("deadletter")),
        "the requeued event has no dead-letter extensions: {line}"
    );
    // Counted and audited.
    let m = s.d.get("/metrics").text();
    assert!(
        m.contains("workmanager_dead_letters_requeued_total{topic=\"t.dl\"} 1"),
        "{m}"
    );
    wait_until("the audit record", || {
        s.d.log()
            .lines()
            .any(|l| l.contains("action=\"requeue\"") || l.contains("action=requeue"))
    });
    // A topic name the daemon refuses: its 400, exit 1.
    let r = s.wm(&["dead-letters", "ls", "bad topic"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("invalid_argument"), "{}", r.stderr);
    s.wm(&["workers", "rm", &id]).ok();
}

#[test]
fn the_seeds_quick_start_layout_is_accepted_with_a_warning() {
    let s = shared();
    // What the seed's script makes: the nuspec at the root, then `<rid>/native/lib<name>.so`.
    let pkg = Nupkg::new()
        .nuspec(
            "Seed.Worker",
            "1.0.0",
            "<virtufinLibrary>chaos</virtufinLibrary>",
        )
        .file_from("linux-x64/native/libchaos.so", &chaos_so())
        .build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.nupkg");
    std::fs::write(&path, &pkg).unwrap();
    let r = s
        .wm(&[
            "workers",
            "create",
            "-p",
            path.to_str().unwrap(),
            "-t",
            "t.seed",
            "--start",
            "-o",
            "json",
        ])
        .ok();
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("runtimes/linux-x64/native/libchaos.so"),
        "{}",
        r.stderr
    );
    let v = r.json();
    assert_eq!(v["status"], "RUNNING", "{v}");
    assert!(
        v["warnings"][0].as_str().unwrap().contains("runtimes/"),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_owned();
    let reply = s
        .wm(&[
            "workers", "invoke", &id, "--data", "\"x\"", "--type", "t.seed",
        ])
        .ok()
        .json();
    assert_eq!(reply["type"], "t.seed.reply");
    assert!(
        s.d.log().contains("without the runtimes/ prefix"),
        "the log names the expected layout"
    );
    s.wm(&["workers", "rm", &id]).ok();
}

#[test]
fn completions_and_man_page_come_from_the_clap_definitions() {
    let bash = wm(&["completions", "bash"], &[]).ok();
    assert!(
        bash.stdout.contains("dead-letters") && bash.stdout.contains("--server"),
        "bash"
    );
    let man = wm(&["man"], &[]).ok();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH workmanager"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    let dir = tempfile::tempdir().unwrap();
    wm(&["man", "--dir", dir.path().to_str().unwrap()], &[]).ok();
    assert!(dir.path().join("workmanager-workers.1").exists());
}

/// `pack` -> `workers create --start` -> `workers invoke` for a package built by `pack`.
fn round_trip(s: &Shared, pack_args: &[&str], dir: &Path, topic: &str) -> Value {
    let out = dir.join(format!("{topic}.nupkg"));
    let mut args = vec!["pack"];
    args.extend_from_slice(pack_args);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    wm(&args, &[]).ok();
    let id = s
        .wm(&[
            "workers",
            "create",
            "-p",
            out.to_str().unwrap(),
            "-t",
            topic,
            "--start",
            "-o",
            "json",
        ])
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ev = dir.join("ev.json");
    std::fs::write(
        &ev,
        format!(r#"{{"specversion":"1.0","id":"rt-1","source":"urn:t","type":"{topic}","datacontenttype":"text/plain","data":"round trip","correlationid":"c-7"}}"#),
    )
    .unwrap();
    let reply = s
        .wm(&["workers", "invoke", &id, "--event", ev.to_str().unwrap()])
        .ok()
        .json();
    s.wm(&["workers", "rm", &id]).ok();
    reply
}

#[test]
fn pack_deploy_invoke_round_trips_for_cpp_and_csharp() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    // C++ (C is covered by the chaos worker above).
    let so = Build::plugin("echo", Lang::Cpp, &["echo.cpp"]).build();
    let reply = round_trip(
        s,
        &["--id", "Echo.Cpp", "--native", so.to_str().unwrap()],
        dir.path(),
        "t.rt.cpp",
    );
    assert_eq!(reply["type"], "echo.reply", "{reply}");
    assert_eq!(reply["data"], "round trip");
    // C#: a build output folder becomes lib/netcoreapp3.1/.
    let dll = dn::build_library("Echo", &["Echo.cs"], &[]);
    let out = dir.path().join("bin");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(&dll, out.join("Echo.dll")).unwrap();
    let reply = round_trip(
        s,
        &["--id", "Echo", "--dotnet", out.to_str().unwrap()],
        dir.path(),
        "t.rt.cs",
    );
    assert_eq!(reply["type"], "echo.reply", "{reply}");
    assert_eq!(reply["data"], "round trip");
    assert_eq!(reply["correlationid"], "c-7");
}

#[test]
fn pack_refuses_what_the_daemon_would_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let so = chaos_so();
    // A library name that is not what the file holds, an entry point that is no C identifier.
    let r = wm(
        &[
            "pack",
            "--id",
            "Bad",
            "--native",
            so.to_str().unwrap(),
            "--library",
            "a/b",
            "--entry-point",
            "not valid",
            "--out",
            dir.path().join("bad.nupkg").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 6, "{r:?}");
    let problems = r
        .stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .count();
    assert!(problems >= 2, "every problem at once: {}", r.stderr);
    assert!(!dir.path().join("bad.nupkg").exists(), "nothing is written");
    // inspect of a good package: what the daemon would load.
    let good = pack_chaos(dir.path());
    let v = wm(&["inspect", good.to_str().unwrap(), "-o", "json"], &[])
        .ok()
        .json();
    assert_eq!(v["entryPoint"], "Process");
    assert_eq!(v["mimeType"], "application/x-native-dll");
}

#[test]
fn run_calls_a_package_once_in_a_sandboxed_host_and_names_the_crash() {
    // `run` needs no daemon: the host-runner next to the binary is enough.
    let _ = shared();
    let dir = tempfile::tempdir().unwrap();
    let pkg = pack_chaos(dir.path());
    let ev = |name: &str, data: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(r#"{{"specversion":"1.0","id":"{name}","source":"urn:t","type":"t.run","datacontenttype":"text/plain","data":"{data}"}}"#),
        )
        .unwrap();
        p
    };
    let ok = ev("ok.json", "hello");
    let r = wm(
        &[
            "run",
            pkg.to_str().unwrap(),
            "--event",
            ok.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let reply: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(reply["data"], "hello", "{}", r.stdout);
    assert_eq!(reply["type"], "t.run.reply");
    // A crash: exit 7, the signal, and this call named as the culprit.
    let segv = ev("segv.json", "segv");
    let r = wm(
        &[
            "run",
            pkg.to_str().unwrap(),
            "--event",
            segv.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, 7, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["crash"]["signal"], "SIGSEGV", "{v}");
    assert_eq!(v["crash"]["culprit"], true, "{v}");
    // A worker error: exit 7 with the worker's words.
    let err = ev("err.json", "error");
    let r = wm(
        &[
            "run",
            pkg.to_str().unwrap(),
            "--event",
            err.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains("worker_error"), "{}", r.stderr);
    // As root (as the daemon runs here), `run` gets every layer the daemon gives its hosts.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            !r.stderr.contains("sandbox layer missing"),
            "run gets the daemon's sandbox: {}",
            r.stderr
        );
    }
}

/// The `workmanager_*` series named in a text (PromQL in JSON or YAML), histogram suffixes
/// folded into their family.
fn series_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("workmanager_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn deploy_files_use_only_series_the_daemon_exports() {
    let s = shared();
    // Every family the daemon can export announces itself with `# TYPE` (also while empty),
    // once a worker has run; the other tests of this module may not have yet.
    let dir = tempfile::tempdir().unwrap();
    let pkg = pack_chaos(dir.path());
    let id = s
        .wm(&[
            "workers",
            "create",
            "-p",
            pkg.to_str().unwrap(),
            "-t",
            "t.deploy",
            "--start",
            "-o",
            "json",
        ])
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wm(&["workers", "invoke", &id, "--data", "1"]).ok();
    let metrics = s.d.get("/metrics").text();
    s.wm(&["workers", "rm", &id]).ok();
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = wm_testkit::workspace_root().join("deploy");
    let dashboard = std::fs::read_to_string(root.join("grafana/workmanager.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap();
    for (file, text) in [
        ("grafana/workmanager.json", &dashboard),
        ("prometheus/alerts.yml", &alerts),
    ] {
        let used = series_in(text);
        assert!(!used.is_empty(), "{file}");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "deploy/{file} uses series the daemon does not export: {missing:?}"
        );
    }
    for alert in [
        "WorkmanagerHostCrashLoop",
        "WorkmanagerDeadLetterRate",
        "WorkmanagerBacklogGrowth",
        "WorkmanagerHostRespawnRate",
    ] {
        assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
    }
}

#[test]
fn new_projects_build_pack_and_pass_their_own_tests() {
    // The C# project finds the DevKit next to host-runner, where the engine's build puts it.
    dn::engine_dir();
    let bin = workmanager_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = tempfile::tempdir().unwrap();
    let test = |project: &Path| {
        Command::new("bash")
            .arg(project.join("test.sh"))
            .env("PATH", &path)
            .env("WORKMANAGER", &bin)
            .env("DOTNET_ROOT", dn::dotnet_root())
            .output()
            .expect("running test.sh")
    };
    for lang in ["c", "cpp", "csharp", "python"] {
        let name = format!("hello-{lang}");
        wm(
            &[
                "new",
                "--lang",
                lang,
                &name,
                "--dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        )
        .ok();
        let project = dir.path().join(&name);
        assert!(
            project.join("README.md").is_file() && project.join("events/sample.json").is_file()
        );
        let out = test(&project);
        assert!(
            out.status.success(),
            "{lang}: the generated project's test failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok   events/sample.json"));
        let artifact = if lang == "python" {
            format!("build/{name}.py")
        } else {
            format!("build/{name}.nupkg")
        };
        assert!(project.join(artifact).is_file());
    }
    // The generated test can fail: a worker that replies with another type is caught.
    let src = dir.path().join("hello-c/src/worker.c");
    let text = std::fs::read_to_string(&src).unwrap();
    std::fs::write(&src, text.replace("\"hello-c.reply\"", "\"other.reply\"")).unwrap();
    let out = test(&dir.path().join("hello-c"));
    assert!(
        !out.status.success(),
        "a wrong reply type must fail the project's test"
    );
    // An existing folder is not overwritten; python waits for its engine.
    let r = wm(
        &[
            "new",
            "--lang",
            "c",
            "hello-c",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    // A bad name is a usage error, whatever the language.
    let r = wm(
        &[
            "new",
            "--lang",
            "python",
            "2bad/name",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is not a worker name"), "{}", r.stderr);
}

#[test]
fn watch_resumes_after_a_daemon_restart_without_losing_events() {
    // A fixed port, so that the restarted daemon is where the tail reconnects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let opts = || {
        DaemonOptions::default()
            .listen(&format!("127.0.0.1:{port}"))
            .data_dir(&data.path().join("data"))
    };
    let mut d = Daemon::start(opts());
    let addr = format!("127.0.0.1:{port}");
    let env = [("WORKMANAGER_ADDR", addr.as_str())];
    wm(
        &[
            "topics", "publish", "t.resume", "--data", "1", "--id", "r-1",
        ],
        &env,
    )
    .ok();
    let mut watch = Command::new(workmanager_bin())
        .args([
            "topics",
            "watch",
            "t.resume",
            "--from-earliest",
            "-n",
            "3",
            "-o",
            "json",
        ])
        .env("WORKMANAGER_ADDR", &addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first event is replayed; then the daemon goes away and comes back.
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first: Value =
        serde_json::from_str(&rx.recv_timeout(WAIT).expect("the first event")).unwrap();
    assert_eq!(first["event"]["id"], "r-1");
    assert!(d.stop().success());
    let d2 = Daemon::start(opts());
    // The tail reconnects with ?after=<the last seq it printed>, so whether these land before
    // or after it is back (that race is not controlled here), it gets each once, in order.
    wm(
        &[
            "topics", "publish", "t.resume", "--data", "2", "--id", "r-2",
        ],
        &env,
    )
    .ok();
    wm(
        &[
            "topics", "publish", "t.resume", "--data", "3", "--id", "r-3",
        ],
        &env,
    )
    .ok();
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let l: Value =
                serde_json::from_str(&rx.recv_timeout(WAIT).expect("an event after the restart"))
                    .unwrap();
            l["event"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, ["r-2", "r-3"]);
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch exits 0 after -n 3");
    drop(d2);
}

#[test]
fn uploads_show_progress_on_a_terminal() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    // A package over 1 MiB: the chaos library plus incompressible padding.
    let mut pad = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in pad.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let pkg = Nupkg::new()
        .nuspec(
            "Big.Worker",
            "1.0.0",
            "<virtufinLibrary>chaos</virtufinLibrary>",
        )
        .file_from("runtimes/linux-x64/native/libchaos.so", &chaos_so())
        .file("runtimes/linux-x64/native/padding.bin", pad)
        .build();
    let path = dir.path().join("big.nupkg");
    std::fs::write(&path, &pkg).unwrap();
    // `script` gives the command a terminal; stderr goes to it.
    let cmd = format!(
        "{} workers create -p {} -t t.big -o json",
        workmanager_bin().display(),
        path.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("WORKMANAGER_ADDR", s.addr())
        .env("WORKMANAGER_TOKEN", &s.token)
        .output()
        .expect("running script(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("uploading") && text.contains("(100%)"),
        "{text}"
    );
    // Off a terminal: no progress.
    let r = s
        .wm(&[
            "workers",
            "create",
            "-p",
            path.to_str().unwrap(),
            "-t",
            "t.big2",
        ])
        .ok();
    assert!(!r.stderr.contains("uploading"), "{}", r.stderr);
}

#[test]
fn pack_signs_with_a_minisign_key_that_minisign_and_the_daemon_accept() {
    let dir = tempfile::tempdir().unwrap();
    let (pubkey, seckey) = (dir.path().join("k.pub"), dir.path().join("k.sec"));
    let made = Command::new("minisign")
        .args([
            "-G",
            "-W",
            "-p",
            pubkey.to_str().unwrap(),
            "-s",
            seckey.to_str().unwrap(),
        ])
        .output()
        .expect("minisign (scripts/install-deps.sh installs it)");
    assert!(made.status.success(), "{made:?}");
    let out = dir.path().join("signed.nupkg");
    let so = chaos_so();
    wm(
        &[
            "pack",
            "--id",
            "Signed.Worker",
            "--native",
            so.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sign-key",
            seckey.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let sig = dir.path().join("signed.nupkg.minisig");
    // minisign itself verifies it.
    let v = Command::new("minisign")
        .args([
            "-V",
            "-m",
            out.to_str().unwrap(),
            "-p",
            pubkey.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{v:?}");
    // A daemon that requires signatures takes it with the signature, and refuses it without.
    let d = Daemon::start(
        DaemonOptions::default().env("PACKAGE_TRUSTED_KEYS", pubkey.to_str().unwrap()),
    );
    let addr = d.addr().to_string();
    let env = [("WORKMANAGER_ADDR", addr.as_str())];
    let r = wm(
        &[
            "workers",
            "create",
            "-p",
            out.to_str().unwrap(),
            "-t",
            "t.signed",
        ],
        &env,
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("invalid_signature"), "{}", r.stderr);
    wm(
        &[
            "workers",
            "create",
            "-p",
            out.to_str().unwrap(),
            "-t",
            "t.signed",
            "--signature",
            sig.to_str().unwrap(),
        ],
        &env,
    )
    .ok();
    // A password-protected key is refused before anything is written.
    let protected = dir.path().join("p.sec");
    let mut text = std::fs::read_to_string(&seckey).unwrap();
    let line = text.lines().nth(1).unwrap().to_owned();
    let mut raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &line).unwrap();
    raw[2..4].copy_from_slice(b"Sc");
    text = text.replace(
        &line,
        &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw),
    );
    std::fs::write(&protected, text).unwrap();
    let other = dir.path().join("other.nupkg");
    let r = wm(
        &[
            "pack",
            "--id",
            "S",
            "--native",
            so.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
            "--sign-key",
            protected.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("minisign -G -W"), "{}", r.stderr);
    assert!(!other.exists());
}

#[test]
fn inspect_applies_the_python_import_policy_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.py");
    std::fs::write(
        &bad,
        "import json\nimport subprocess\n\ndef Process(e):\n    return None\n",
    )
    .unwrap();
    let r = wm(
        &[
            "inspect",
            bad.to_str().unwrap(),
            "--mime-type",
            "text/x-python",
        ],
        &[],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("ImportError: subprocess is not allowed (line 2)"),
        "{}",
        r.stderr
    );
    // The same setting as the daemon's: a module blocked only by PYTHON_BLOCKED_MODULES.
    let r = wm(
        &[
            "inspect",
            bad.to_str().unwrap(),
            "--mime-type",
            "text/x-python",
        ],
        &[("PYTHON_BLOCKED_MODULES", "json")],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("json is not allowed (line 1)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("subprocess"), "{}", r.stderr);
}
