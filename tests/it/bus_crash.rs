//! `kill -9` of a publishing process: everything it had acknowledged is in the store.
//!
//! The test re-runs its own binary as the child (selected by an environment variable): the
//! child publishes from several tasks and prints each acknowledged sequence number; the parent
//! SIGKILLs it mid-stream, then opens the same store and finds every acknowledged event.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wm_supervisor::bus::{Bus, SqliteBus, SqliteBusOptions};

use crate::bus_store::{WAIT, event, recv};

const CHILD_ENV: &str = "WM_BUS_KILL_CHILD_DIR";
const TEST_NAME: &str = "bus_crash::acknowledged_publishes_survive_sigkill";
const TOPIC: &str = "crash";

/// The child: publish forever, print `ACK <seq>` for each acknowledged event.
fn child(dir: &str) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = SqliteBus::open(std::path::Path::new(dir), SqliteBusOptions::default()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
        for t in 0..8 {
            let bus = bus.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let events = vec![event(t * 1_000_000 + i), event(t * 1_000_000 + i + 500_000)];
                    let seqs = bus.publish(TOPIC, events).await.unwrap();
                    let _ = tx.send(seqs);
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(seqs) = rx.recv().await {
            for s in seqs {
                writeln!(out, "ACK {s}").unwrap();
            }
            out.flush().unwrap();
        }
    });
    unreachable!("the child publishes until it is killed")
}

#[test]
fn acknowledged_publishes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(proc.id()).unwrap());
    let stdout = proc.stdout.take().unwrap();
    // Watchdog: a child that never publishes must not hang the test.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = kill(pid, Signal::SIGKILL);
    });
    let mut acked = BTreeSet::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(seq) = line.strip_prefix("ACK ") {
            acked.insert(seq.parse::<u64>().unwrap());
        }
        if !killed && acked.len() >= 400 {
            kill(pid, Signal::SIGKILL).unwrap();
            killed = true;
        }
    }
    let status = proc.wait().unwrap();
    drop(watchdog);
    assert!(
        killed,
        "the child stopped before publishing 400 events: {status}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the child died of SIGKILL");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = SqliteBus::open(dir.path(), SqliteBusOptions::default()).unwrap();
        let stored = bus.metrics().stored();
        assert!(
            stored >= acked.len() as i64,
            "{stored} events stored, {} acknowledged",
            acked.len()
        );
        let mut c = bus.consume(TOPIC, "check");
        let mut missing = acked.clone();
        let mut seen = 0;
        while !missing.is_empty() {
            let d = tokio::time::timeout(WAIT, recv(&mut c)).await.unwrap();
            assert_eq!(d.deliveries, 1, "never delivered before the crash");
            missing.remove(&d.seq);
            seen += 1;
        }
        assert!(seen as i64 <= stored);
        bus.close().await;
    });
}
