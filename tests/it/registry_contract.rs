//! The registry contract, one generic suite run against both backends: the embedded SQLite
//! store and the cluster store on a real nats-server (`REGISTRY_BACKEND=jetstream`). Then
//! what only the shared store promises: a second daemon's view follows the first's writes
//! (KV watch, code fetched from the object store), and concurrent changes of one worker from
//! two daemons are all kept (compare-and-swap).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wm_supervisor::cluster::NatsSettings;
use wm_supervisor::codestore::CodeStore;
use wm_supervisor::registry::{
    CodeRef, CodeSourceKind, JetStreamStore, LastError, RegistryError, SqliteStore, Status, Store,
    TagOutcome, WorkerRecord,
};
use wm_supervisor::runtime::Isolation;
use wm_testkit::nats::NatsServer;

fn record(id: &str, code: &CodeRef) -> WorkerRecord {
    WorkerRecord {
        id: id.to_owned(),
        mime_type: "application/x-native-dll".into(),
        topic: "t".into(),
        group: Some("g".into()),
        config: vec![("zeta".into(), "1".into()), ("alpha".into(), "2".into())],
        tags: [("k".to_owned(), "v".to_owned())].into(),
        limits: Default::default(),
        isolation: Isolation::Dedicated,
        message_timeout_seconds: 30,
        max_concurrency: 2,
        status: Status::Stopped,
        desired_running: false,
        last_error: None,
        code: code.clone(),
        replicas: Some(2),
        created_at: wm_supervisor::registry::now_rfc3339(),
        updated_at: wm_supervisor::registry::now_rfc3339(),
    }
}

fn code(codes: &CodeStore, bytes: &[u8]) -> CodeRef {
    let sha256 = codes.put(bytes).expect("store a blob");
    CodeRef {
        sha256,
        size: bytes.len() as u64,
        source: CodeSourceKind::Content,
        url: None,
    }
}

/// What every store must do.
fn contract(s: &dyn Store, codes: &CodeStore) {
    let c1 = code(codes, b"version one");
    let a = record("00000000-0000-0000-0000-00000000000a", &c1);
    s.create_worker(&a).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let b = record("00000000-0000-0000-0000-00000000000b", &c1);
    s.create_worker(&b).unwrap();
    assert!(matches!(s.create_worker(&a), Err(RegistryError::Exists(_))));
    assert_eq!(
        s.get_worker(&a.id).unwrap().as_ref(),
        Some(&a),
        "round trip"
    );
    let ids: Vec<String> = s
        .list_workers()
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, [a.id.clone(), b.id.clone()], "oldest first");
    assert_eq!(s.get_worker("nope").unwrap(), None);

    // Code history.
    let c2 = code(codes, b"version two");
    assert!(s.set_code(&a.id, &c2, "2026-02-01T00:00:00.000Z").unwrap());
    assert!(!s.set_code("nope", &c2, "2026-02-01T00:00:00.000Z").unwrap());
    let h = s.history(&a.id).unwrap().unwrap();
    assert_eq!(
        h.iter()
            .map(|e| (e.version, e.code.sha256.clone()))
            .collect::<Vec<_>>(),
        [(1, c1.sha256.clone()), (2, c2.sha256.clone())]
    );
    assert_eq!(s.get_worker(&a.id).unwrap().unwrap().code, c2);
    assert_eq!(s.history("nope").unwrap(), None);

    // Status: ERROR keeps its reason, anything else clears it; the wish to run is kept
    // unless given.
    let err = LastError {
        error_type: "timeout".into(),
        message: "took too long".into(),
        at: "2026-02-01T00:00:00.000Z".into(),
    };
    assert!(
        s.set_status(&a.id, Status::Running, Some(true), None)
            .unwrap()
    );
    assert!(
        s.set_status(&a.id, Status::Error, None, Some(&err))
            .unwrap()
    );
    let w = s.get_worker(&a.id).unwrap().unwrap();
    assert_eq!((w.status, w.desired_running), (Status::Error, true));
    assert_eq!(w.last_error.as_ref(), Some(&err));
    assert!(
        s.set_status(&a.id, Status::Stopped, Some(false), Some(&err))
            .unwrap()
    );
    let w = s.get_worker(&a.id).unwrap().unwrap();
    assert_eq!(
        (w.status, w.desired_running, w.last_error),
        (Status::Stopped, false, None)
    );
    assert!(!s.set_status("nope", Status::Running, None, None).unwrap());

    // Tags: the limit counts only new keys.
    assert_eq!(s.set_tag(&a.id, "x", "1", 2).unwrap(), TagOutcome::Set);
    assert_eq!(
        s.set_tag(&a.id, "y", "1", 2).unwrap(),
        TagOutcome::LimitReached
    );
    assert_eq!(s.set_tag(&a.id, "x", "2", 2).unwrap(), TagOutcome::Set);
    assert_eq!(
        s.set_tag("nope", "x", "1", 2).unwrap(),
        TagOutcome::NotFound
    );
    assert_eq!(s.delete_tag(&a.id, "x").unwrap(), Some(true));
    assert_eq!(s.delete_tag(&a.id, "x").unwrap(), Some(false));
    assert_eq!(s.delete_tag("nope", "x").unwrap(), None);
    let tags: BTreeMap<String, String> = [("only".to_owned(), "one".to_owned())].into();
    assert!(s.set_tags(&a.id, &tags).unwrap());
    assert_eq!(s.get_worker(&a.id).unwrap().unwrap().tags, tags);

    // State: per worker, the key limit counts only new keys, deleted keys free a place.
    assert_eq!(s.state_set(&a.id, "k1", b"v1", 2).unwrap(), TagOutcome::Set);
    assert_eq!(s.state_set(&a.id, "k2", b"v2", 2).unwrap(), TagOutcome::Set);
    assert_eq!(
        s.state_set(&a.id, "k3", b"v3", 2).unwrap(),
        TagOutcome::LimitReached
    );
    assert_eq!(
        s.state_set(&a.id, "k1", b"v1b", 2).unwrap(),
        TagOutcome::Set
    );
    assert!(s.state_delete(&a.id, "k2").unwrap());
    assert!(!s.state_delete(&a.id, "k2").unwrap());
    assert_eq!(s.state_set(&a.id, "k3", b"v3", 2).unwrap(), TagOutcome::Set);
    assert_eq!(
        s.state_get(&a.id, "k1").unwrap().as_deref(),
        Some(&b"v1b"[..])
    );
    assert_eq!(
        s.state_get(&b.id, "k1").unwrap(),
        None,
        "state is per worker"
    );
    assert_eq!(
        s.state_set("nope", "k", b"v", 2).unwrap(),
        TagOutcome::NotFound
    );

    // Delete takes everything of the worker with it.
    assert!(s.delete_worker(&a.id).unwrap());
    assert!(!s.delete_worker(&a.id).unwrap());
    assert_eq!(s.get_worker(&a.id).unwrap(), None);
    assert_eq!(s.state_get(&a.id, "k1").unwrap(), None);
    assert_eq!(s.list_workers().unwrap().len(), 1);
}

fn open_shared(
    nats: &NatsServer,
    dir: &Path,
) -> (
    JetStreamStore,
    CodeStore,
    tokio::sync::mpsc::UnboundedReceiver<wm_supervisor::registry::RegistryChange>,
) {
    let codes = CodeStore::open(dir).unwrap();
    let local = SqliteStore::open(&dir.join("registry.db")).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = format!("contract-{}", dir.display());
    let s = JetStreamStore::open(
        &NatsSettings::for_url(&nats.url()),
        &name,
        local,
        codes.clone(),
        tx,
    )
    .unwrap();
    (s, codes, rx)
}

#[test]
fn registry_contract_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("registry.db")).unwrap();
    contract(&s, &CodeStore::open(dir.path()).unwrap());
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registry_contract_jetstream_and_two_daemons_views() {
    let nats = NatsServer::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, codes1, _rx1) = open_shared(&nats, d1.path());
    contract(&s1, &codes1);

    // A second daemon opening later loads what exists, code included (from the object store).
    let (s2, codes2, mut rx2) = open_shared(&nats, d2.path());
    let survivor = s1.list_workers().unwrap();
    assert_eq!(s2.list_workers().unwrap(), survivor, "loaded at open");
    let sha = &survivor[0].code.sha256;
    assert!(codes2.blob_path(sha).exists(), "code blob fetched");
    assert_eq!(codes2.read(sha).unwrap(), b"version one");

    // Then follows changes through the watch, and says so.
    let c = code(&codes1, b"created on daemon one");
    let w = record("00000000-0000-0000-0000-00000000000c", &c);
    s1.create_worker(&w).unwrap();
    eventually("daemon two sees the create", || {
        s2.get_worker(&w.id).unwrap().is_some()
    });
    assert_eq!(codes2.read(&c.sha256).unwrap(), b"created on daemon one");
    eventually("the change reported to daemon two's reconcile", || {
        std::iter::from_fn(|| rx2.try_recv().ok()).any(|ch| ch.worker_id == w.id && !ch.deleted)
    });
    // State written on one is read on the other.
    assert_eq!(
        s2.state_set(&w.id, "shared", b"yes", 10).unwrap(),
        TagOutcome::Set
    );
    assert_eq!(
        s1.state_get(&w.id, "shared").unwrap().as_deref(),
        Some(&b"yes"[..])
    );

    // Concurrent changes of one worker from both daemons: none is lost.
    let (s1, s2) = (Arc::new(s1), Arc::new(s2));
    let writers: Vec<_> = [s1.clone(), s2.clone()]
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            let id = w.id.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let out = s.set_tag(&id, &format!("d{n}-{i}"), "x", 100).unwrap();
                    assert_eq!(out, TagOutcome::Set);
                }
            })
        })
        .collect();
    for t in writers {
        t.join().unwrap();
    }
    let want = 1 + 30;
    for s in [&s1, &s2] {
        eventually("every concurrent tag kept on both views", || {
            s.get_worker(&w.id).unwrap().unwrap().tags.len() == want
        });
    }

    // A delete on one daemon reaches the other.
    assert!(s2.delete_worker(&w.id).unwrap());
    eventually("daemon one sees the delete", || {
        s1.get_worker(&w.id).unwrap().is_none()
    });
    assert_eq!(s1.state_get(&w.id, "shared").unwrap(), None, "state purged");
}
