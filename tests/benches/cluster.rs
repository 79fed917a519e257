//! Issue 15: the end-to-end workload on both bus backends in one run, and on JetStream with
//! 1, 2 and 3 daemons. Results go to docs/benchmarks.md ("Cluster mode").
//!
//! Workload: 8 publisher threads, keep-alive connections spread over the daemons, one event a
//! request; on every daemon one chaos worker (`maxConcurrency` 4, echo) on the topic; replies
//! counted on one daemon's SSE stream (it sees every daemon's replies). 6 s measured after 1 s
//! of warm-up. Baseline: the embedded bus with one daemon, measured in the same run.
//!
//! `cargo bench -p workmanager-tests --bench cluster` (needs `nats-server`, see
//! scripts/install-deps.sh). `CLUSTER_BENCH_RUNS` (default 2) repeats the whole set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nats::NatsServer;
use wm_testkit::nupkg;
use wm_testkit::sse::Sse;

const TOPIC: &str = "bench.in";
const PUBLISHERS: usize = 8;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(6);

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            line: String::new(),
        }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> u16 {
        let mut msg = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(body);
        self.w.write_all(&msg).expect("send");
        self.line.clear();
        self.r.read_line(&mut self.line).expect("status");
        let status = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut len = 0usize;
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).expect("header");
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut out = vec![0; len];
        self.r.read_exact(&mut out).expect("body");
        status
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

struct Figures {
    events_per_s: f64,
    publish_p50: Duration,
    publish_p99: Duration,
    reply_p50: Duration,
}

fn start_daemons(n: usize, nats: Option<&NatsServer>) -> Vec<Daemon> {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    (0..n)
        .map(|_| {
            let mut o = DaemonOptions::default().env("WORKMANAGER_LOG", "warn");
            if let Some(nats) = nats {
                o = o
                    .env("BUS_BACKEND", "jetstream")
                    .env("NATS_URL", &nats.url());
            }
            let d = Daemon::start(o);
            let body = json!({
                "mimeType": "application/x-native-dll",
                "topic": TOPIC,
                "maxConcurrency": 4,
                "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(&pkg)},
            });
            let r = d.send_json("POST", "/v1/workers", &body);
            assert_eq!(r.status, 201, "create: {}", r.text());
            let id = r.json()["id"].as_str().expect("id").to_string();
            let r = d.post(&format!("/v1/workers/{id}/start"));
            assert!(r.status < 300, "start: {}", r.text());
            d
        })
        .collect()
}

fn run(daemons: &[Daemon]) -> Figures {
    let base = daemons[0].base_url();
    let replies: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = {
        let (replies, stop) = (replies.clone(), stop.clone());
        std::thread::spawn(move || {
            let sse = Sse::subscribe(&base, &format!("{TOPIC}.reply"));
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = sse.next(Duration::from_millis(200))
                    && let Some(id) = v["id"].as_str()
                {
                    replies
                        .lock()
                        .unwrap()
                        .entry(id.to_string())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    ready_rx.recv().unwrap();
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let measure_to = measure_from + MEASURE;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let addr = daemons[p % daemons.len()].addr();
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut sent = Vec::new();
                let mut n = 0;
                while Instant::now() < measure_to {
                    let id = format!("p{p}-{n}");
                    let ev = json!({"specversion": "1.0", "id": id, "source": "urn:bench",
                                    "type": TOPIC, "datacontenttype": "text/plain", "data": "x"});
                    let b = serde_json::to_vec(&ev).unwrap();
                    let t = Instant::now();
                    let s = c.post(&format!("/v1/topics/{TOPIC}/events"), &b);
                    assert_eq!(s, 202);
                    sent.push((id, t, t.elapsed()));
                    n += 1;
                }
                sent
            })
        })
        .collect();
    let sent: Vec<(String, Instant, Duration)> = publishers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    // Let the backlog of the measured window drain (bounded).
    let drain_until = Instant::now() + Duration::from_secs(20);
    let measured: Vec<&(String, Instant, Duration)> = sent
        .iter()
        .filter(|(_, t, _)| *t >= measure_from && *t < measure_to)
        .collect();
    while Instant::now() < drain_until {
        let r = replies.lock().unwrap();
        if measured.iter().all(|(id, _, _)| r.contains_key(id)) {
            break;
        }
        drop(r);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let r = replies.lock().unwrap();
    let in_window = r
        .values()
        .filter(|t| **t >= measure_from && **t < measure_to)
        .count();
    let mut pub_lat: Vec<Duration> = measured.iter().map(|(_, _, l)| *l).collect();
    let mut reply_lat: Vec<Duration> = measured
        .iter()
        .filter_map(|(id, t, _)| r.get(id).map(|at| at.duration_since(*t)))
        .collect();
    Figures {
        events_per_s: in_window as f64 / MEASURE.as_secs_f64(),
        publish_p50: pct(&mut pub_lat, 0.5),
        publish_p99: pct(&mut pub_lat, 0.99),
        reply_p50: pct(&mut reply_lat, 0.5),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("CLUSTER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    println!(
        "| run | configuration | events/s | ratio to embedded | publish p50 / p99 | reply p50 | load avg |"
    );
    println!("|---|---|---|---|---|---|---|");
    for run_no in 1..=runs {
        let embedded = {
            let daemons = start_daemons(1, None);
            run(&daemons)
        };
        let row = |name: &str, f: &Figures| {
            println!(
                "| {run_no} | {name} | {:.0} | {:.2} | {:.2} / {:.2} ms | {:.2} ms | {} |",
                f.events_per_s,
                f.events_per_s / embedded.events_per_s.max(1.0),
                f.publish_p50.as_secs_f64() * 1e3,
                f.publish_p99.as_secs_f64() * 1e3,
                f.reply_p50.as_secs_f64() * 1e3,
                load_average()
            );
        };
        row("embedded, 1 daemon (baseline)", &embedded);
        for n in 1..=3 {
            let nats = NatsServer::start();
            let daemons = start_daemons(n, Some(&nats));
            let f = run(&daemons);
            row(&format!("jetstream, {n} daemon(s)"), &f);
        }
    }
}
