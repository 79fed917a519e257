//! Storage: every SQL statement of the embedded bus, and nothing else (no routing state).
//!
//! One table `events` holds every event: open ones (`settled` = 0: waiting, handed out, or
//! being handled) and, for the replay window, those that reached their outcome (`settled` =
//! 1). `topic_evicted` remembers, per topic, the highest sequence number that left the window,
//! so that a reader resuming from an older one is told it missed events.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::super::BusError;
use super::Durability;

/// Creates the tables (first start) and brings a store written by an earlier version up to
/// date: it deleted events at their outcome; now they stay as rows for the replay window.
///
/// Sequence numbers are assigned by the writer ([`Store::next_seq`]), not by `AUTOINCREMENT`
/// (which rewrites `sqlite_sequence` on every insert); a store created with it keeps working.
/// One index, `(topic, seq)`, serves replay, trims and the reload of open events: a partial
/// index of open events cost an index insert and delete per event, and every reader of open
/// events starts from a known position (the spill point, or the oldest open event at start).
pub(super) fn init(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE;
         PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         -- Fewer, larger checkpoints (hot index pages are copied once per checkpoint, not once
         -- per 1,000 pages written), and a WAL file cut back after each checkpoint. (A larger
         -- page cache measured no faster and cost RSS.)
         PRAGMA wal_autocheckpoint=8000;
         PRAGMA journal_size_limit=67108864;
         CREATE TABLE IF NOT EXISTS events (
             seq INTEGER PRIMARY KEY,
             topic TEXT NOT NULL,
             event BLOB NOT NULL,
             published_ms INTEGER NOT NULL,
             deliveries INTEGER NOT NULL DEFAULT 0,
             settled INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS events_by_topic ON events(topic, seq);
         CREATE TABLE IF NOT EXISTS topic_evicted (
             topic TEXT PRIMARY KEY,
             through INTEGER NOT NULL
         );",
    )?;
    let has_settled = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'settled'")?
        .exists([])?;
    if !has_settled {
        conn.execute_batch("ALTER TABLE events ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;")?;
    }
    conn.execute_batch("DROP INDEX IF EXISTS events_open;")
}

/// The first sequence number this run may assign: above every stored row, every row that
/// left the replay window (`topic_evicted`), and what an `AUTOINCREMENT` store of an earlier
/// version handed out, so that a number is never reused (SSE clients resume by it).
fn first_free_seq(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let max = |sql: &str| -> Result<i64, rusqlite::Error> {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.unwrap_or(0))
    };
    let mut top = max("SELECT max(seq) FROM events")?;
    top = top.max(max("SELECT max(through) FROM topic_evicted")?);
    let has_sequence = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")?
        .exists([])?;
    if has_sequence {
        top = top.max(max(
            "SELECT max(seq) FROM sqlite_sequence WHERE name = 'events'",
        )?);
    }
    Ok(to_u64(top) + 1)
}

pub(super) fn store_err(step: &'static str) -> impl Fn(rusqlite::Error) -> BusError {
    move |e| BusError::Store {
        step,
        source: Arc::new(e),
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn to_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

pub(super) fn to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// An event to insert: (topic, blob, ended). An ended row is stored already settled: an event
/// on a topic nobody consumes or holds, kept only for the replay window.
pub(super) type Row<'a> = (&'a str, &'a [u8], bool);

/// What a group commit writes, in one transaction.
#[derive(Default)]
pub(super) struct WriteBatch<'a> {
    /// Publishes: per publish, its events.
    pub appends: Vec<Vec<Row<'a>>>,
    /// Settles: the event to mark settled.
    pub settles: Vec<u64>,
    /// Completions: the event to settle and its reply, stored only if the event was open.
    pub completes: Vec<(u64, Option<Row<'a>>)>,
    /// Deliveries handed out since the last commit: their attempt counts, persisted here
    /// rather than in a transaction of their own.
    pub delivered: Vec<u64>,
    /// Topics over their replay window: delete this many of their oldest settled rows.
    pub trims: Vec<(&'a str, u64)>,
}

#[cfg(test)]
impl WriteBatch<'_> {
    /// Whether it stores events (a commit that must be fsync'd under `Durability::Fsync`).
    pub fn stores(&self) -> bool {
        !self.appends.is_empty() || self.completes.iter().any(|c| c.1.is_some())
    }
}

/// What a group commit did.
pub(super) struct WriteResult {
    pub appended: Vec<Vec<u64>>,
    /// The topic of each settled event (None: it was not open).
    pub settled: Vec<Option<String>>,
    /// Per completion: the topic of the settled event (None: it was not open, nothing was
    /// stored) and the reply's sequence number.
    pub completed: Vec<(Option<String>, Option<u64>)>,
    /// Per trim: rows deleted, and the highest sequence number deleted.
    pub trimmed: Vec<(u64, u64)>,
}

/// The connection and the synchronous mode it is in.
pub(super) struct Store {
    /// `None` once closed.
    conn: Option<Connection>,
    /// The current `PRAGMA synchronous` is FULL.
    sync_full: bool,
    durability: Durability,
    /// The sequence number of the next event stored (advanced only by a commit that held).
    next_seq: u64,
}

/// A summary of the store at start.
pub(super) struct Census {
    /// Open events per topic, and the oldest one's sequence number.
    pub open: Vec<(String, u64, u64)>,
    /// Rows (open or in the replay window) per topic.
    pub rows: Vec<(String, u64)>,
    /// The highest evicted sequence number per topic.
    pub evicted: HashMap<String, u64>,
}

impl Store {
    pub fn new(conn: Connection, durability: Durability) -> Result<Store, rusqlite::Error> {
        let next_seq = first_free_seq(&conn)?;
        Ok(Store {
            conn: Some(conn),
            sync_full: true,
            durability,
            next_seq,
        })
    }

    fn conn(&mut self) -> Result<&mut Connection, rusqlite::Error> {
        self.conn.as_mut().ok_or_else(|| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                Some("the bus store is already closed".into()),
            )
        })
    }

    fn set_sync(&mut self, full: bool) -> Result<(), rusqlite::Error> {
        if self.sync_full != full {
            let value = if full { "FULL" } else { "NORMAL" };
            self.conn()?.pragma_update(None, "synchronous", value)?;
            self.sync_full = full;
        }
        Ok(())
    }

    pub fn census(&mut self) -> Result<Census, rusqlite::Error> {
        let conn = self.conn()?;
        let count = |sql: &str| -> Result<Vec<(String, u64)>, rusqlite::Error> {
            let mut st = conn.prepare(sql)?;
            st.query_map([], |r| Ok((r.get(0)?, to_u64(r.get(1)?))))?
                .collect()
        };
        let open = {
            let mut st = conn.prepare(
                "SELECT topic, count(*), min(seq) FROM events WHERE settled = 0 GROUP BY topic",
            )?;
            st.query_map([], |r| {
                Ok((r.get(0)?, to_u64(r.get(1)?), to_u64(r.get(2)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        let rows = count("SELECT topic, count(*) FROM events GROUP BY topic")?;
        let evicted = count("SELECT topic, through FROM topic_evicted")?
            .into_iter()
            .collect();
        Ok(Census {
            open,
            rows,
            evicted,
        })
    }

    /// Open events of `topic` from `from` on, oldest first: (seq, blob, deliveries).
    pub fn load_open(
        &mut self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>, u32)>, rusqlite::Error> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT seq, event, deliveries FROM events
             WHERE topic = ?1 AND seq >= ?2 AND settled = 0 ORDER BY seq LIMIT ?3",
        )?;
        st.query_map(
            params![
                topic,
                to_i64(from),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok((
                    to_u64(r.get(0)?),
                    r.get(1)?,
                    u32::try_from(r.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                ))
            },
        )?
        .collect()
    }

    /// Every event of `topic` after `after` (open or not), oldest first: (seq, blob).
    pub fn replay(
        &mut self,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, rusqlite::Error> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT seq, event FROM events WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        st.query_map(
            params![
                topic,
                to_i64(after),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
        )?
        .collect()
    }

    /// The group commit: appends, settles, completions and replay-window trims in one
    /// transaction (fsync'd under [`Durability::Fsync`] when it stores anything).
    #[cfg(test)]
    pub fn commit(&mut self, b: &WriteBatch<'_>) -> Result<WriteResult, BusError> {
        self.commit_then(b, |_| {})
    }

    /// Runs `b` in one transaction; `before_commit` gets the sequence numbers of the appended
    /// events once every statement ran, just before the COMMIT (and its fsync). Those numbers
    /// are never handed out again, even if the COMMIT fails: whoever learnt them early (a
    /// consumer, see `flow::hand_out_early`) cannot settle a later event by mistake. (The
    /// writer runs the same steps itself, with a join window between the last two.)
    #[cfg(test)]
    pub fn commit_then(
        &mut self,
        b: &WriteBatch<'_>,
        before_commit: impl FnOnce(&[Vec<u64>]),
    ) -> Result<WriteResult, BusError> {
        self.begin(b.stores())?;
        let out = match self.write(b) {
            Ok(out) => out,
            Err(e) => {
                self.rollback();
                return Err(e);
            }
        };
        before_commit(&out.appended);
        self.finish()?;
        Ok(out)
    }

    /// Opens a group commit's transaction (`stores`: it will store events, so under
    /// [`Durability::Fsync`] its COMMIT is fsync'd). Then [`Store::write`] one or more
    /// batches into it (the join window adds the commands that arrive meanwhile), and
    /// [`Store::finish`] or [`Store::rollback`].
    pub fn begin(&mut self, stores: bool) -> Result<(), BusError> {
        let full = stores && self.durability == Durability::Fsync;
        self.set_sync(full)
            .map_err(store_err("set the sync mode"))?;
        self.conn()
            .and_then(|c| c.execute_batch("BEGIN"))
            .map_err(store_err("begin a transaction"))
    }

    /// Runs the statements of `b` in the transaction [`Store::begin`] opened. On success the
    /// numbers it assigned are never assigned again, whatever happens to the transaction
    /// (they may be handed out before the COMMIT); on an error the caller rolls back.
    pub fn write(&mut self, b: &WriteBatch<'_>) -> Result<WriteResult, BusError> {
        let now = now_ms();
        let mut next = self.next_seq;
        let tx = self.conn().map_err(store_err("write to the store"))?;
        let mut out = WriteResult {
            appended: Vec::with_capacity(b.appends.len()),
            settled: Vec::with_capacity(b.settles.len()),
            completed: Vec::with_capacity(b.completes.len()),
            trimmed: Vec::with_capacity(b.trims.len()),
        };
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO events (seq, topic, event, published_ms, settled) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(store_err("prepare an insert"))?;
            // One row write per event; its number is ours, so no `RETURNING` read-back.
            let mut insert = |topic: &str, blob: &[u8], ended: bool| {
                let seq = next;
                ins.execute(params![to_i64(seq), topic, blob, now, i64::from(ended)])
                    .map(|_| {
                        next += 1;
                        seq
                    })
            };
            let mut settle = tx
                .prepare_cached(
                    "UPDATE events SET settled = 1 WHERE seq = ?1 AND settled = 0 RETURNING topic",
                )
                .map_err(store_err("prepare a settle"))?;
            for events in &b.appends {
                let mut s = Vec::with_capacity(events.len());
                for (topic, blob, ended) in events {
                    s.push(insert(topic, blob, *ended).map_err(store_err("append an event"))?);
                }
                out.appended.push(s);
            }
            for seq in &b.settles {
                let topic: Option<String> = settle
                    .query_row(params![to_i64(*seq)], |r| r.get(0))
                    .optional()
                    .map_err(store_err("settle an event"))?;
                out.settled.push(topic);
            }
            for (seq, reply) in &b.completes {
                let topic: Option<String> = settle
                    .query_row(params![to_i64(*seq)], |r| r.get(0))
                    .optional()
                    .map_err(store_err("settle an event"))?;
                let reply_seq = match (&topic, reply) {
                    (Some(_), Some((rtopic, blob, ended))) => {
                        Some(insert(rtopic, blob, *ended).map_err(store_err("append a reply"))?)
                    }
                    _ => None,
                };
                out.completed.push((topic, reply_seq));
            }
            if !b.delivered.is_empty() {
                let mut upd = tx
                    .prepare_cached("UPDATE events SET deliveries = deliveries + 1 WHERE seq = ?1")
                    .map_err(store_err("prepare a delivery count"))?;
                for seq in &b.delivered {
                    upd.execute(params![to_i64(*seq)])
                        .map_err(store_err("count a delivery"))?;
                }
            }
            if !b.trims.is_empty() {
                let mut trim = tx
                    .prepare_cached(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events
                         WHERE topic = ?1 AND settled <> 0 ORDER BY seq LIMIT ?2) RETURNING seq",
                    )
                    .map_err(store_err("prepare a trim"))?;
                let mut mark = tx
                    .prepare_cached(
                        "INSERT INTO topic_evicted (topic, through) VALUES (?1, ?2)
                         ON CONFLICT(topic) DO UPDATE SET through = max(through, excluded.through)",
                    )
                    .map_err(store_err("prepare a trim"))?;
                for (topic, n) in &b.trims {
                    let seqs: Vec<i64> = trim
                        .query_map(params![topic, to_i64(*n)], |r| r.get(0))
                        .and_then(|rows| rows.collect())
                        .map_err(store_err("trim the replay window"))?;
                    let max = seqs.iter().copied().max().map_or(0, to_u64);
                    if max > 0 {
                        mark.execute(params![topic, to_i64(max)])
                            .map_err(store_err("trim the replay window"))?;
                    }
                    out.trimmed.push((seqs.len() as u64, max));
                }
            }
        }
        self.next_seq = next;
        Ok(out)
    }

    /// COMMITs the open transaction (one fsync under [`Durability::Fsync`] when it stored
    /// anything); on failure it is rolled back and nothing of it is stored.
    pub fn finish(&mut self) -> Result<(), BusError> {
        let committed = self.conn().and_then(|c| c.execute_batch("COMMIT"));
        if committed.is_err() {
            self.rollback();
        }
        committed.map_err(store_err("commit"))
    }

    /// Rolls the open transaction back (after a failed statement or COMMIT; a transaction
    /// SQLite already rolled back itself is no error).
    pub fn rollback(&mut self) {
        if let Ok(c) = self.conn()
            && !c.is_autocommit()
            && let Err(e) = c.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "bus: cannot roll back a failed group commit; the store is reopened at the next start");
        }
    }

    /// Counts deliveries and settles drops (`Dropped`, kept for the replay window), in one
    /// transaction without fsync (a lost count after a power cut only means one delivery too
    /// few). `drop_from`: (topic, seq) = every open event of the topic from seq on; returns
    /// how many each of those settled.
    pub fn record(
        &mut self,
        delivered: &[u64],
        dropped: &[u64],
        drop_from: &[(&str, u64)],
    ) -> Result<Vec<u64>, rusqlite::Error> {
        self.set_sync(false)?;
        let conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(drop_from.len());
        {
            let mut upd =
                tx.prepare_cached("UPDATE events SET deliveries = deliveries + 1 WHERE seq = ?1")?;
            let mut del =
                tx.prepare_cached("UPDATE events SET settled = 1 WHERE seq = ?1 AND settled = 0")?;
            let mut del_from = tx.prepare_cached(
                "UPDATE events SET settled = 1 WHERE topic = ?1 AND seq >= ?2 AND settled = 0",
            )?;
            for seq in delivered {
                upd.execute(params![to_i64(*seq)])?;
            }
            for seq in dropped {
                del.execute(params![to_i64(*seq)])?;
            }
            for (topic, from) in drop_from {
                out.push(del_from.execute(params![topic, to_i64(*from)])? as u64);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Stores the attempt count of events given back; true for each that is still open.
    pub fn set_deliveries(&mut self, counts: &[(u64, u32)]) -> Result<Vec<bool>, rusqlite::Error> {
        self.set_sync(false)?;
        let conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(counts.len());
        {
            let mut upd = tx.prepare_cached(
                "UPDATE events SET deliveries = ?2 WHERE seq = ?1 AND settled = 0",
            )?;
            for (seq, n) in counts {
                out.push(upd.execute(params![to_i64(*seq), i64::from(*n)])? > 0);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Deletes settled rows published before `cutoff_ms` (at most `limit`); returns, per
    /// topic, rows deleted and the highest sequence number deleted.
    pub fn expire(
        &mut self,
        cutoff_ms: i64,
        limit: u64,
    ) -> Result<HashMap<String, (u64, u64)>, rusqlite::Error> {
        self.set_sync(false)?;
        let conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        {
            // Sequence numbers grow with time: the first young row bounds the scan.
            let boundary: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM events WHERE published_ms >= ?1 ORDER BY seq LIMIT 1",
                )?
                .query_row(params![cutoff_ms], |r| r.get(0))
                .optional()?;
            let mut del = tx.prepare_cached(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events
                 WHERE seq < ?1 AND settled <> 0 ORDER BY seq LIMIT ?2) RETURNING topic, seq",
            )?;
            let rows = del
                .query_map(params![boundary.unwrap_or(i64::MAX), to_i64(limit)], |r| {
                    Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?)))
                })?;
            for row in rows {
                let (topic, seq) = row?;
                let e = out.entry(topic).or_default();
                e.0 += 1;
                e.1 = e.1.max(seq);
            }
            let mut mark = tx.prepare_cached(
                "INSERT INTO topic_evicted (topic, through) VALUES (?1, ?2)
                 ON CONFLICT(topic) DO UPDATE SET through = max(through, excluded.through)",
            )?;
            for (topic, (_, max)) in &out {
                mark.execute(params![topic, to_i64(*max)])?;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Settles the `n` oldest open events of `topic` (a dead-letter topic over its limit);
    /// returns their sequence numbers.
    pub fn evict_open(&mut self, topic: &str, n: u64) -> Result<Vec<u64>, rusqlite::Error> {
        self.set_sync(false)?;
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "UPDATE events SET settled = 1 WHERE seq IN (SELECT seq FROM events
             WHERE topic = ?1 AND settled = 0 ORDER BY seq LIMIT ?2) RETURNING seq",
        )?;
        st.query_map(params![topic, to_i64(n)], |r| Ok(to_u64(r.get(0)?)))?
            .collect()
    }

    pub fn close(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "bus: closing the store failed; the WAL is replayed on the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Connection {
        let conn = Connection::open(dir.join("bus.db")).unwrap();
        init(&conn).unwrap();
        conn
    }

    fn append<'a>(topic: &'a str, n: usize, ended: bool) -> WriteBatch<'a> {
        WriteBatch {
            appends: vec![vec![(topic, b"x".as_slice(), ended); n]],
            ..WriteBatch::default()
        }
    }

    #[test]
    fn numbers_that_left_the_replay_window_are_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(open(dir.path()), Durability::Os).unwrap();
        let done = store.commit(&append("t", 3, true)).unwrap();
        assert_eq!(done.appended, [vec![1, 2, 3]]);
        // Every row leaves the window: the table is empty afterwards.
        let trim = WriteBatch {
            trims: vec![("t", 10)],
            ..WriteBatch::default()
        };
        assert_eq!(store.commit(&trim).unwrap().trimmed, [(3, 3)]);
        store.close();
        let mut store = Store::new(open(dir.path()), Durability::Os).unwrap();
        let done = store.commit(&append("u", 1, false)).unwrap();
        assert_eq!(done.appended, [vec![4]], "3 was evicted, not forgotten");
    }

    #[test]
    fn a_store_of_the_autoincrement_schema_keeps_counting_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema of earlier versions: AUTOINCREMENT, and a partial index of open rows.
            let conn = Connection::open(dir.path().join("bus.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                     event BLOB NOT NULL, published_ms INTEGER NOT NULL,
                     deliveries INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX events_by_topic ON events(topic, seq);
                 INSERT INTO events (topic, event, published_ms) VALUES ('t', x'00', 0), ('t', x'00', 0);
                 ALTER TABLE events ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
                 CREATE INDEX events_open ON events(topic, seq) WHERE settled = 0;
                 INSERT INTO events (topic, event, published_ms) VALUES ('t', x'00', 0);
                 DELETE FROM events WHERE seq > 1;",
            )
            .unwrap();
        }
        let conn = open(dir.path());
        let index: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'events_open'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(index, None, "the partial index is dropped");
        let mut store = Store::new(conn, Durability::Os).unwrap();
        let done = store.commit(&append("t", 2, false)).unwrap();
        assert_eq!(
            done.appended,
            [vec![4, 5]],
            "2 and 3 were handed out before"
        );
        let census = store.census().unwrap();
        assert_eq!(census.open, [("t".to_string(), 3, 1)]);
    }

    #[test]
    fn a_failed_commit_hands_out_its_numbers_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(open(dir.path()), Durability::Os).unwrap();
        store.commit(&append("t", 2, false)).unwrap();
        // Number 3 is taken behind the store's back: the next commit fails and rolls back.
        let sql = |store: &mut Store, sql: &str| store.conn().unwrap().execute_batch(sql).unwrap();
        sql(
            &mut store,
            "INSERT INTO events (seq, topic, event, published_ms) VALUES (3, 'x', x'00', 0)",
        );
        assert!(store.commit(&append("t", 2, false)).is_err());
        sql(&mut store, "DELETE FROM events WHERE seq = 3");
        let done = store.commit(&append("t", 1, false)).unwrap();
        assert_eq!(done.appended, [vec![3]]);
    }
}
