//! The `/ui` dashboard in headless Chromium (Debian's `chromium`, driven over the DevTools
//! protocol): it needs the API's token like any client (HTTP Basic, the token as password,
//! which is what the browser sends after its login prompt), shows workers and hosts, updates from
//! SSE while a worker crashes its host and the host respawns (no reload), tails a topic, and
//! requeues a dead letter. Screenshots of each view go to `target/ui-screenshots/`, and to
//! `docs/ui/` with `WM_UI_SCREENSHOTS=docs`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wm_testkit::chromium::Browser;
use wm_testkit::daemon::{Daemon, DaemonOptions, workmanager_bin};
use wm_testkit::native::{Build, Lang};

const WAIT: Duration = Duration::from_secs(30);

fn wm(args: &[&str], addr: &str, token: &str) -> String {
    let out = Command::new(workmanager_bin())
        .args(args)
        .env("WORKMANAGER_ADDR", addr)
        .env("WORKMANAGER_TOKEN", token)
        .output()
        .expect("running workmanager");
    assert!(
        out.status.success(),
        "workmanager {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shots(name: &str) -> Vec<PathBuf> {
    let root = wm_testkit::workspace_root();
    let mut v = vec![wm_testkit::target_dir().join("ui-screenshots").join(name)];
    if std::env::var("WM_UI_SCREENSHOTS").as_deref() == Ok("docs") {
        v.push(root.join("docs/ui").join(name));
    }
    v
}

fn screenshot(b: &mut Browser, name: &str) {
    for p in shots(name) {
        b.screenshot(&p);
    }
}

/// The hosts table as (id, pid, restarts, crashes).
fn hosts(b: &mut Browser) -> Vec<(String, String, u64, u64)> {
    let v = b.eval(
        "[...document.querySelectorAll('#hosts tbody tr')].map(r => [...r.cells].map(c => c.textContent))",
    );
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let c = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            (
                c(0),
                c(1),
                c(6).parse().unwrap_or(0),
                c(7).parse().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn the_dashboard_follows_a_crash_and_respawn_live_and_requeues_a_dead_letter() {
    let created = Command::new(workmanager_bin())
        .args(["token", "create", "--name", "ui", "--scope", "admin"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&created.stdout).into_owned();
    let token = text.lines().next().unwrap().to_owned();
    let entry = text
        .lines()
        .nth(1)
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_owned();
    let d = Daemon::start(
        DaemonOptions::default()
            .env("WORKMANAGER_API_TOKENS", &entry)
            .env("WORKER_RETRY_ATTEMPTS", "0")
            .env("HOST_RESPAWN_BACKOFF_MS", "50"),
    );
    let addr = d.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("chaos.nupkg");
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    wm(
        &[
            "pack",
            "--id",
            "Chaos.Worker",
            "--native",
            so.to_str().unwrap(),
            "--out",
            pkg.to_str().unwrap(),
        ],
        &addr,
        &token,
    );
    let v: Value = serde_json::from_str(&wm(
        &[
            "workers",
            "create",
            "-p",
            pkg.to_str().unwrap(),
            "-t",
            "t.ui",
            "--isolation",
            "dedicated",
            "--start",
            "-o",
            "json",
        ],
        &addr,
        &token,
    ))
    .unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    wm(
        &["topics", "publish", "t.ui", "--data", "\"warm-up\""],
        &addr,
        &token,
    );

    // The page needs the API's credentials: without them, 401 and a Basic challenge (the
    // browser's login prompt: any user name, the token as password).
    let r = d.get("/ui");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic "))
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("ops:{token}")
        )
    );
    let mut b = Browser::open_with_headers(
        &format!("{}/ui", d.base_url()),
        &[("Authorization", &basic)],
    );
    b.wait_for(
        "the worker row",
        WAIT,
        &format!("[...document.querySelectorAll('#workers tbody tr')].some(r => r.dataset.key === '{id}' && r.textContent.includes('RUNNING'))"),
    );
    b.wait_for(
        "the live badge",
        WAIT,
        "document.getElementById('live').textContent === 'live'",
    );
    screenshot(&mut b, "workers.png");

    b.eval("location.hash = '#hosts'; window.__marker = 42; true");
    b.wait_for(
        "a host row",
        WAIT,
        "document.querySelectorAll('#hosts tbody tr').length > 0",
    );
    let before = hosts(&mut b);
    let (host_id, pid_before, restarts_before, crashes_before) = before
        .iter()
        .find(|h| h.0.contains("dedicated"))
        .cloned()
        .unwrap_or_else(|| panic!("no dedicated host in {before:?}"));
    let updates_before = b.eval("window.__wm.updates").as_u64().unwrap();
    screenshot(&mut b, "hosts.png");

    // The worker crashes its host; the pool respawns it. The page follows without a reload.
    wm(
        &[
            "topics",
            "publish",
            "t.ui",
            "--data",
            "\"segv\"",
            "--id",
            "poison-ui",
        ],
        &addr,
        &token,
    );
    b.wait_for(
        "the respawned host in the table",
        WAIT,
        &format!(
            "[...document.querySelectorAll('#hosts tbody tr')].some(r => r.dataset.key === '{host_id}' \
             && r.cells[1].textContent !== '{pid_before}' && r.cells[1].textContent !== '' \
             && Number(r.cells[7].textContent) > {crashes_before} && Number(r.cells[6].textContent) > {restarts_before})"
        ),
    );
    assert_eq!(
        b.eval("window.__marker"),
        Value::from(42),
        "the page was not reloaded"
    );
    assert!(
        b.eval("window.__wm.updates").as_u64().unwrap() > updates_before,
        "the update came from SSE"
    );
    screenshot(&mut b, "hosts-after-crash.png");

    // The crash dead-lettered the event: listed and requeued from the page.
    b.eval("location.hash = '#dead'; document.getElementById('dead-topic').value = 't.ui'; document.getElementById('dead-form').requestSubmit(); true");
    b.wait_for(
        "the dead letter",
        WAIT,
        "[...document.querySelectorAll('#dead tbody tr')].some(r => r.textContent.includes('poison-ui') && r.textContent.includes('crash'))",
    );
    screenshot(&mut b, "dead-letters.png");
    b.eval("[...document.querySelectorAll('#dead tbody tr')].find(r => r.textContent.includes('poison-ui')).querySelector('button').click(); true");
    b.wait_for(
        "the requeue",
        WAIT,
        "document.getElementById('dead-result').textContent.startsWith('requeued 1')",
    );
    assert!(
        d.log().contains("dead letters requeued"),
        "the daemon did the requeue"
    );

    // The topic tail shows the topic's events, the requeued one included.
    b.eval("location.hash = '#tail'; document.getElementById('tail-topic').value = 't.ui'; document.getElementById('tail-earliest').checked = true; document.getElementById('tail-form').requestSubmit(); true");
    b.wait_for(
        "the tail",
        WAIT,
        "[...document.querySelectorAll('#tail tbody tr')].filter(r => r.textContent.includes('poison-ui')).length >= 2",
    );
    screenshot(&mut b, "tail.png");
    assert_eq!(
        b.eval("window.__marker"),
        Value::from(42),
        "still no reload"
    );
}
