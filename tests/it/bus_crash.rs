//! `kill -9` of a publishing process: everything it had acknowledged is in the store.
//!
//! The test re-runs its own binary as the child (selected by an environment variable): the
//! child publishes from several tasks and prints each acknowledged sequence number; the parent
//! SIGKILLs it mid-stream, then opens the same store and finds every acknowledged event. The
//! second test does the same with `BUS_DURABILITY=os` and one event at a time, each completed
//! by a consumer, so that the writes are committed inline on the caller's thread.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wm_supervisor::bus::{Bus, Durability, Outcome, SqliteBus, SqliteBusOptions};

use crate::bus_store::{WAIT, event, recv};

const CHILD_ENV: &str = "WM_BUS_KILL_CHILD_DIR";
const TEST_NAME: &str = "bus_crash::acknowledged_publishes_survive_sigkill";
const TOPIC: &str = "crash";

/// The child: publish forever, print `ACK <seq>` for each acknowledged event.
fn child(dir: &str) -> ! {
    let rt = crate::self_child::runtime();
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
    let mut proc = crate::self_child::command(TEST_NAME, CHILD_ENV, dir.path())
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

    let rt = crate::self_child::runtime();
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

const INLINE_CHILD_ENV: &str = "WM_BUS_KILL_INLINE_CHILD_DIR";
const INLINE_TEST_NAME: &str = "bus_crash::acknowledged_inline_writes_survive_sigkill";

/// The child: `os` durability, one publish at a time, each delivery completed with a reply;
/// prints `ACK <seq>` per acknowledged publish, `DONE <seq>` per acknowledged completion and
/// `INLINE <n>` with the writes committed inline so far.
fn inline_child(dir: &str) -> ! {
    let rt = crate::self_child::runtime();
    rt.block_on(async {
        let opts = SqliteBusOptions {
            durability: Durability::Os,
            ..SqliteBusOptions::default()
        };
        let bus = SqliteBus::open(std::path::Path::new(dir), opts).unwrap();
        let mut c = bus.consume(TOPIC, "w");
        bus.set_ready();
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            let seqs = bus.publish(TOPIC, vec![event(i)]).await.unwrap();
            writeln!(out, "ACK {}", seqs[0]).unwrap();
            out.flush().unwrap();
            let d = recv(&mut c).await;
            let mut reply = d.event.clone();
            reply.id = format!("r-{}", d.event.id);
            bus.complete(
                d.seq,
                Outcome::Replied,
                Some((format!("{TOPIC}.reply"), reply)),
            )
            .await
            .unwrap();
            writeln!(out, "DONE {}", d.seq).unwrap();
            writeln!(out, "INLINE {}", bus.metrics().inline_writes()).unwrap();
            out.flush().unwrap();
        }
    });
    unreachable!("the child publishes until it is killed")
}

#[test]
fn acknowledged_inline_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(INLINE_CHILD_ENV) {
        inline_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = crate::self_child::command(INLINE_TEST_NAME, INLINE_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(proc.id()).unwrap());
    let stdout = proc.stdout.take().unwrap();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = kill(pid, Signal::SIGKILL);
    });
    let (mut acked, mut done) = (BTreeSet::new(), BTreeSet::new());
    let mut inline = 0u64;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(seq) = line.strip_prefix("ACK ") {
            acked.insert(seq.parse::<u64>().unwrap());
        } else if let Some(seq) = line.strip_prefix("DONE ") {
            done.insert(seq.parse::<u64>().unwrap());
        } else if let Some(n) = line.strip_prefix("INLINE ") {
            inline = n.parse().unwrap();
        }
        if !killed && done.len() >= 300 {
            kill(pid, Signal::SIGKILL).unwrap();
            killed = true;
        }
    }
    proc.wait().unwrap();
    drop(watchdog);
    assert!(killed, "the child stopped before completing 300 events");
    assert!(
        inline >= done.len() as u64,
        "{inline} inline writes for {} completed events: lone writes were not inline",
        done.len()
    );

    let rt = crate::self_child::runtime();
    rt.block_on(async {
        let bus = SqliteBus::open(dir.path(), SqliteBusOptions::default()).unwrap();
        // Every acknowledged publish is stored; every acknowledged completion left its
        // input settled (not delivered again) and its reply stored.
        let page = bus.replay(TOPIC, 0, 100_000).await.unwrap();
        let stored: BTreeSet<u64> = page.events.iter().map(|p| p.seq).collect();
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
        let replies = bus
            .replay(&format!("{TOPIC}.reply"), 0, 100_000)
            .await
            .unwrap();
        assert!(
            replies.events.len() >= done.len(),
            "{} replies stored for {} acknowledged completions",
            replies.events.len(),
            done.len()
        );
        let mut c = bus.consume(TOPIC, "check");
        // At most the one event in flight at the kill is delivered again.
        let mut again = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
            assert!(
                !done.contains(&d.seq),
                "completed event {} delivered again",
                d.seq
            );
            again.push(d.seq);
        }
        assert!(again.len() <= 1, "delivered again: {again:?}");
        bus.close().await;
    });
}
