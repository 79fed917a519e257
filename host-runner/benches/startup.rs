//! Start-up and lifecycle figures of a native host, measured through a real ring:
//! spawn -> Ready (sandbox included), LoadWorker -> LoadResult, first Process, a warm Process
//! round trip, and UnloadWorker -> UnloadResult. Run with `cargo bench -p workmanager-host-runner`.
//! Prints medians; no thresholds (targets live in DESIGN.md section 10).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_shared::CloudEvent;
use wm_shared::protocol::{self, Message};
use wm_shared::ring::{self, Region, RingConfig};
use wm_testkit::native::{Build, Lang};

const RUNS: usize = 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let so = Build::plugin("worker", Lang::C, &["worker.c"]).build();
    let dir = so.parent().expect("dir").to_string_lossy().into_owned();
    let ev = CloudEvent::new("1", "echo", "urn:bench").to_flatbuffer();
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.starts_with("--no-"))
        .collect();
    let (mut ready, mut load, mut first, mut warm, mut unload) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut throughput = 0.0;
    for i in 0..RUNS {
        let region = Arc::new(
            Region::create(&format!("bench-{i}"), &RingConfig::default()).expect("region"),
        );
        let fd = region.as_fd().as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-runner"));
        cmd.args(["--ring-fd", "3", "--engine", "native", "--host-id", "bench"])
            .args(&extra)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2/fcntl in the forked child are async-signal-safe; fd is open.
        unsafe {
            cmd.pre_exec(move || {
                if fd != 3 {
                    libc::dup2(fd, 3);
                }
                libc::fcntl(3, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let (tx, mut rx) = ring::supervisor_channels(region.clone());
        let mut buf = Vec::new();
        let mut recv = |buf: &mut Vec<u8>| {
            rx.recv(buf, Some(Duration::from_secs(10))).expect("frame");
            Message::decode(buf).expect("decode")
        };
        let t = Instant::now();
        let mut child = cmd.spawn().expect("spawn");
        assert!(matches!(recv(&mut buf), Message::Ready(_)));
        ready.push(t.elapsed());

        let t = Instant::now();
        let lw = Message::LoadWorker(protocol::LoadWorker {
            request_id: 1,
            worker_id: "w".into(),
            package_dir: dir.clone(),
            library_path: "libworker.so".into(),
            max_concurrency: 1,
            timeout_ms: 1000,
            ..Default::default()
        });
        tx.send(&lw.encode(), Duration::from_secs(1)).expect("send");
        assert!(matches!(recv(&mut buf), Message::LoadResult(r) if r.ok));
        load.push(t.elapsed());

        for n in 0..50u64 {
            let t = Instant::now();
            let p = Message::Process(protocol::Process {
                msg_id: n,
                worker_id: "w".into(),
                event: ev.clone(),
            });
            tx.send(&p.encode(), Duration::from_secs(1)).expect("send");
            assert!(matches!(recv(&mut buf), Message::ProcessResult(_)));
            if n == 0 {
                first.push(t.elapsed());
            } else {
                warm.push(t.elapsed());
            }
        }

        if i == 0 {
            // Pipelined throughput of one worker (one thread), up to WINDOW calls in flight.
            const TOTAL: u64 = 50_000;
            const WINDOW: u64 = 512;
            let t = Instant::now();
            let (mut sent, mut done) = (0u64, 0u64);
            let mut frame = Vec::new();
            while done < TOTAL {
                while sent < TOTAL && sent - done < WINDOW {
                    frame.clear();
                    frame.extend_from_slice(
                        &Message::Process(protocol::Process {
                            msg_id: 1000 + sent,
                            worker_id: "w".into(),
                            event: ev.clone(),
                        })
                        .encode(),
                    );
                    tx.send(&frame, Duration::from_secs(5)).expect("send");
                    sent += 1;
                }
                assert!(matches!(recv(&mut buf), Message::ProcessResult(_)));
                done += 1;
            }
            throughput = TOTAL as f64 / t.elapsed().as_secs_f64();
        }

        let t = Instant::now();
        let u = Message::UnloadWorker(protocol::UnloadWorker {
            request_id: 2,
            worker_id: "w".into(),
        });
        tx.send(&u.encode(), Duration::from_secs(1)).expect("send");
        assert!(matches!(recv(&mut buf), Message::UnloadResult(r) if r.ok));
        unload.push(t.elapsed());

        tx.send(
            &Message::Shutdown { deadline_ms: 100 }.encode(),
            Duration::from_secs(1),
        )
        .expect("send");
        child.wait().expect("wait");
    }
    println!("native host, {RUNS} runs, medians (flags: {extra:?}):");
    println!("  spawn -> Ready (exec + sandbox)     {:?}", median(ready));
    println!("  LoadWorker -> LoadResult            {:?}", median(load));
    println!("  first Process round trip            {:?}", median(first));
    println!("  warm Process round trip (sequential) {:?}", median(warm));
    println!("  UnloadWorker -> UnloadResult        {:?}", median(unload));
    println!("  pipelined echo, one worker thread    {throughput:.0} msgs/s");
}
