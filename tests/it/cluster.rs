//! Cluster mode end to end: real `workmanager serve` daemons with `BUS_BACKEND=jetstream` on
//! real `nats-server` processes (one server, and a three-server JetStream cluster), started
//! on free loopback ports with temporary stores.
//!
//! Every daemon here has its own (embedded) registry, so each test creates the worker on each
//! daemon, on one topic: they share that topic's durable consumer, so the daemons compete for
//! its events (docs/cluster.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use wm_supervisor::bus::{Bus, JetStreamBus, JetStreamBusOptions};
use wm_supervisor::cluster::{NatsSettings, connect};
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::native::{Build, Lang};
use wm_testkit::nats::{NatsCluster, NatsServer};
use wm_testkit::nupkg;

pub(crate) const WAIT: Duration = Duration::from_secs(90);

pub(crate) fn cluster_daemon(nats_urls: &str, extra: &[(&str, &str)]) -> Daemon {
    let mut o = DaemonOptions::default()
        .env("BUS_BACKEND", "jetstream")
        .env("NATS_URL", nats_urls)
        // A dead daemon's in-flight events go to the others after this.
        .env("NATS_ACK_WAIT_SECONDS", "3");
    for (k, v) in extra {
        o = o.env(k, v);
    }
    Daemon::start(o)
}

/// The chaos fixture worker on `topic` (`sleep:<ms>` sleeps then echoes with the same id).
fn worker(d: &Daemon, topic: &str) -> String {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "maxConcurrency": 2,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
    id
}

/// Publishes one event; retried (same id: JetStream drops the duplicate) while the daemon
/// answers 503, which it does while NATS fails over.
pub(crate) fn publish(d: &Daemon, topic: &str, id: &str, data: &str) {
    let ev = json!({"specversion": "1.0", "id": id, "source": "urn:test", "type": topic,
                    "datacontenttype": "text/plain", "data": data});
    let deadline = Instant::now() + WAIT;
    loop {
        let r = d.send_json("POST", &format!("/v1/topics/{topic}/events"), &ev);
        if r.status == 202 {
            return;
        }
        assert!(
            r.status == 503 && Instant::now() < deadline,
            "publish {id}: {} {}\ndaemon log:\n{}",
            r.status,
            r.text(),
            tail(&d.log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Reads the stream the way a client of any daemon would see it: ids of `topic`'s events,
/// with how many times each is stored.
pub(crate) struct Reader {
    rt: tokio::runtime::Runtime,
    bus: Arc<JetStreamBus>,
}

impl Reader {
    /// `replicas`: as the daemons have it (opening the bus applies its stream settings).
    pub(crate) fn new(url: &str, replicas: usize) -> Reader {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bus = rt.block_on(async {
            let mut s = NatsSettings::for_url(url);
            s.replicas = replicas;
            let conn = connect(&s, "cluster-test-reader").await.unwrap();
            // Retried: right after a server died, its streams elect new leaders.
            let deadline = Instant::now() + WAIT;
            loop {
                match JetStreamBus::open(conn.clone(), s.clone(), JetStreamBusOptions::default())
                    .await
                {
                    Ok(bus) => break bus,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("reader: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("cannot open the bus: {e}"),
                }
            }
        });
        Reader { rt, bus }
    }

    fn ids(&self, topic: &str) -> BTreeMap<String, usize> {
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            let mut after = 0;
            loop {
                let page = match self.bus.replay(topic, after, 1000).await {
                    Ok(p) => p,
                    // A leader election under way: the caller polls again.
                    Err(e) => {
                        eprintln!("replay: {e}");
                        break;
                    }
                };
                let Some(last) = page.events.last() else {
                    break;
                };
                after = last.seq;
                for p in &page.events {
                    *out.entry(p.event.id.clone()).or_default() += 1;
                }
            }
            out
        })
    }

    /// The JSON data of `topic`'s first 1000 events.
    fn data(&self, topic: &str) -> Vec<serde_json::Value> {
        self.rt.block_on(async {
            let page = self.bus.replay(topic, 0, 1000).await.unwrap();
            page.events
                .iter()
                .filter_map(|p| serde_json::from_slice(p.event.data.as_deref()?).ok())
                .collect()
        })
    }

    /// Every stored event of `topic` (the first 1000).
    pub(crate) fn events(&self, topic: &str) -> Vec<wm_shared::CloudEvent> {
        self.rt.block_on(async {
            match self.bus.replay(topic, 0, 1000).await {
                Ok(page) => page.events.into_iter().map(|p| p.event.clone()).collect(),
                Err(e) => {
                    eprintln!("replay: {e}");
                    Vec::new()
                }
            }
        })
    }

    pub(crate) fn wait_ids(&self, topic: &str, want: usize, what: &str) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ids = self.ids(topic);
            if ids.len() >= want {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {want} on {topic} within {WAIT:?}",
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn processed(d: &Daemon) -> u64 {
    d.get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("workmanager_messages_processed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn health(d: &Daemon) -> (u16, serde_json::Value) {
    let r = d.get("/health");
    (r.status, r.json())
}

#[test]
fn three_daemons_share_a_topic_and_a_sigkilled_one_loses_nothing() {
    let nats = NatsServer::start();
    let mut daemons: Vec<Daemon> = (0..3).map(|_| cluster_daemon(&nats.url(), &[])).collect();
    let c = daemons[2].get("/v1/cluster").json();
    let deadline = Instant::now() + WAIT;
    while daemons[2].get("/v1/cluster").json()["members"]
        .as_array()
        .map(Vec::len)
        != Some(3)
    {
        assert!(Instant::now() < deadline, "three members expected: {c:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for d in &daemons {
        worker(d, "cl.in");
        let (code, h) = health(d);
        assert_eq!(code, 200, "{h:#}");
        assert_eq!(h["entries"]["nats"]["status"], "Healthy", "{h:#}");
    }
    let reader = Reader::new(&nats.url(), 1);
    const N: usize = 90;
    for i in 0..N {
        publish(&daemons[i % 3], "cl.in", &format!("e{i}"), "sleep:60");
    }
    // Mid-stream: some replies are out, calls are running on every daemon.
    reader.wait_ids("cl.in.reply", 20, "replies before the kill");
    let before: Vec<u64> = daemons.iter().map(processed).collect();
    daemons[1].kill9();
    // The survivors carry on, also with new events.
    for i in N..N + 10 {
        publish(
            &daemons[if i % 2 == 0 { 0 } else { 2 }],
            "cl.in",
            &format!("e{i}"),
            "x",
        );
    }
    let replies = reader.wait_ids("cl.in.reply", N + 10, "every accepted event's reply");
    let dead = reader.ids("cl.in-dead");
    let missing: Vec<String> = (0..N + 10)
        .map(|i| format!("e{i}"))
        .filter(|id| !replies.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "no outcome for {missing:?}");
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    // Replies of calls that were in flight at the kill are published again by the survivor
    // that redoes them; JetStream stores them once (same Nats-Msg-Id).
    let dups: Vec<(&String, &usize)> = replies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "replies stored more than once: {dups:?}");
    // Lifecycle events of all three daemons share the bus, each naming its daemon.
    let instances: std::collections::BTreeSet<String> = reader
        .data("workmanager.lifecycle")
        .iter()
        .filter_map(|d| d["instance"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        instances.len(),
        3,
        "lifecycle events name their daemons: {instances:?}"
    );
    assert!(instances.iter().all(|i| i.starts_with("workmanager@")));
    // GET /v1/cluster: the killed daemon leaves the list once its entry ages out (15 s).
    let deadline = Instant::now() + WAIT;
    loop {
        let c = daemons[0].get("/v1/cluster").json();
        assert_eq!(c["backend"], "jetstream", "{c:#}");
        let members = c["members"].as_array().cloned().unwrap_or_default();
        assert!(members.len() >= 2, "{c:#}");
        assert_eq!(
            members.iter().filter(|m| m["self"] == true).count(),
            1,
            "{c:#}"
        );
        if members.len() == 2 {
            assert!(
                members
                    .iter()
                    .all(|m| m["listen"].as_array().is_some_and(|l| !l.is_empty()))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed daemon is still listed: {c:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let after: Vec<u64> = [0, 2].iter().map(|i| processed(&daemons[*i])).collect();
    eprintln!("processed per daemon before the kill {before:?}; survivors at the end {after:?}");
    assert!(
        before.iter().all(|n| *n > 0),
        "every daemon served: {before:?}"
    );
    // (The killed daemon went on finishing calls between the snapshot and the kill, so its
    // share is not known exactly: the survivors' progress is what is checked.)
    assert!(
        after[0] > before[0] && after[1] > before[2],
        "the survivors carried on: {before:?} -> {after:?}"
    );
}

#[test]
fn an_embedded_daemon_is_a_cluster_of_one() {
    let d = Daemon::start(DaemonOptions::default());
    let c = d.get("/v1/cluster").json();
    assert_eq!(c["backend"], "embedded", "{c:#}");
    assert_eq!(c["members"].as_array().map(Vec::len), Some(1), "{c:#}");
    assert_eq!(c["members"][0]["self"], true);
    let me = c["members"][0]["instance"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(me.starts_with("workmanager@"), "{c:#}");

    // `replicas` is validated and recorded; embedded, a worker runs on this daemon alone.
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let body = |replicas: u32| {
        json!({
            "mimeType": "application/x-native-dll",
            "topic": "emb.in",
            "replicas": replicas,
            "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(&pkg)},
        })
    };
    for bad in [0, 5000] {
        let r = d.send_json("POST", "/v1/workers", &body(bad));
        assert_eq!(r.status, 400, "replicas {bad}: {}", r.text());
        assert!(r.text().contains("replicas"), "{}", r.text());
    }
    let r = d.send_json("POST", "/v1/workers", &body(2));
    assert_eq!(r.status, 201, "{}", r.text());
    let w = r.json();
    assert_eq!(
        w["placement"],
        json!({"replicas": 2, "instances": []}),
        "stopped: nowhere"
    );
    let id = w["id"].as_str().expect("id");
    assert!(d.post(&format!("/v1/workers/{id}/start")).status < 300);
    let w = d.get(&format!("/v1/workers/{id}")).json();
    assert_eq!(
        w["placement"],
        json!({"replicas": 2, "instances": [me]}),
        "{w:#}"
    );
    assert!(!w["hostPid"].is_null(), "loaded here: {w:#}");
}

#[test]
fn a_daemon_that_loses_nats_stays_live_reports_not_ready_and_resumes() {
    let mut nats = NatsServer::start();
    let d = cluster_daemon(&nats.url(), &[]);
    worker(&d, "out.in");
    publish(&d, "out.in", "before", "x");
    let reader = Reader::new(&nats.url(), 1);
    reader.wait_ids("out.in.reply", 1, "the reply before the outage");
    drop(reader);

    nats.kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, h) = health(&d);
        if code == 503 && h["entries"]["nats"]["status"] == "Unhealthy" {
            break;
        }
        assert!(Instant::now() < deadline, "still ready without NATS: {h:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.get("/health/live").status, 200);
    let ev = json!({"specversion": "1.0", "id": "during", "source": "urn:test", "type": "out.in",
                    "datacontenttype": "text/plain", "data": "x"});
    let r = d.send_json("POST", "/v1/topics/out.in/events", &ev);
    assert_eq!(
        r.status,
        503,
        "a publish without NATS is refused, not lost: {}",
        r.text()
    );

    nats.restart();
    let deadline = Instant::now() + WAIT;
    while health(&d).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after NATS came back: {:#}",
            health(&d).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    publish(&d, "out.in", "after", "x");
    let reader = Reader::new(&nats.url(), 1);
    let ids = reader.wait_ids("out.in.reply", 2, "replies after NATS came back");
    assert_eq!(ids.keys().collect::<Vec<_>>(), ["after", "before"]);
}

#[test]
fn a_three_server_nats_cluster_loses_a_server_mid_stream_and_nothing_is_lost() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let daemons: Vec<Daemon> = (0..2)
        .map(|_| cluster_daemon(&urls, &[("NATS_STREAM_REPLICAS", "3")]))
        .collect();
    for d in &daemons {
        worker(d, "r3.in");
    }
    let reader = Reader::new(&cluster.servers[0].url(), 3);
    const N: usize = 60;
    for i in 0..N / 2 {
        publish(&daemons[i % 2], "r3.in", &format!("e{i}"), "sleep:20");
    }
    reader.wait_ids("r3.in.reply", 5, "replies before the server dies");
    drop(reader);
    cluster.servers[1].kill();
    for i in N / 2..N {
        publish(&daemons[i % 2], "r3.in", &format!("e{i}"), "x");
    }
    let reader = Reader::new(&cluster.servers[0].url(), 3);
    let replies = reader.wait_ids("r3.in.reply", N, "every event's reply after a server died");
    let missing: Vec<String> = (0..N)
        .map(|i| format!("e{i}"))
        .filter(|id| !replies.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    for d in &daemons {
        let deadline = Instant::now() + WAIT;
        while health(d).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "daemon not ready: {:#}",
                health(d).1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits for a reply with `id` on `topic`; returns when it was seen.
fn wait_reply(reader: &Reader, topic: &str, id: &str) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if reader.ids(topic).contains_key(id) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no reply {id} on {topic}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn group_worker(d: &Daemon, topic: &str, group: &str) {
    let so = Build::plugin("chaos", Lang::C, &["chaos.c"]).build();
    let pkg = nupkg::native(
        "Chaos.Worker",
        "chaos",
        &so,
        "<virtufinLibrary>chaos</virtufinLibrary>",
    );
    let body = json!({
        "mimeType": "application/x-native-dll",
        "topic": topic,
        "group": group,
        "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
    });
    let r = d.send_json("POST", "/v1/workers", &body);
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());
}

#[test]
fn group_locks_exclude_across_daemons_and_a_dead_holders_lease_expires() {
    let nats = NatsServer::start();
    let settings = [
        ("NATS_LOCK_LEASE_SECONDS", "3"),
        ("GROUP_LOCK_MAX_RETRIES", "8"),
        ("GROUP_LOCK_RETRY_BASE_DELAY_MS", "100"),
    ];
    let mut a = cluster_daemon(&nats.url(), &settings);
    let b = cluster_daemon(&nats.url(), &settings);
    group_worker(&a, "g.one", "g");
    group_worker(&b, "g.two", "g");
    let reader = Reader::new(&nats.url(), 1);
    // Two 600 ms calls of one group on two daemons: the second waits for the first.
    let started = Instant::now();
    publish(&a, "g.one", "p1", "sleep:600");
    publish(&b, "g.two", "p2", "sleep:600");
    let t1 = wait_reply(&reader, "g.one.reply", "p1");
    let t2 = wait_reply(&reader, "g.two.reply", "p2");
    let both = t1.max(t2) - started;
    assert!(
        both >= Duration::from_millis(1200),
        "calls of one group on two daemons overlapped: both done after {both:?}"
    );

    // The holder dies mid-call: the lease is free once it ages out, not before.
    publish(&a, "g.one", "long", "sleep:60000");
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    let killed = Instant::now();
    publish(&b, "g.two", "after", "x");
    let t = wait_reply(&reader, "g.two.reply", "after");
    let waited = t - killed;
    eprintln!("the dead holder's lease freed the group after {waited:?}");
    assert!(
        waited >= Duration::from_millis(1000),
        "the group was taken while the dead holder's lease was still valid ({waited:?})"
    );
}
