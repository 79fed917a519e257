//! The embedded [`Store`]: SQLite in WAL mode at `<data-dir>/registry.db`.
//!
//! One connection behind a mutex: the control plane writes rarely and each statement takes
//! microseconds, so a pool would add nothing. `synchronous = FULL` makes a commit durable
//! before it returns; every method runs in one transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use wm_shared::sync::Locked as _;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    CodeRef, CodeSourceKind, HistoryEntry, LastError, RegistryError, Status, Store, TagOutcome,
    WorkerRecord,
};
use crate::runtime::Isolation;
use crate::worker_limits::WorkerLimits;

/// Schema versions, in order; `PRAGMA user_version` records how many were applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        mime_type TEXT NOT NULL,
        topic TEXT NOT NULL,
        grp TEXT,
        isolation TEXT NOT NULL,
        message_timeout_seconds INTEGER NOT NULL,
        max_concurrency INTEGER NOT NULL,
        status TEXT NOT NULL,
        desired_running INTEGER NOT NULL,
        last_error TEXT,
        code_sha256 TEXT NOT NULL,
        code_size INTEGER NOT NULL,
        code_source TEXT NOT NULL,
        code_url TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
     );
     CREATE TABLE worker_config (
        worker_id TEXT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
        pos INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (worker_id, pos)
     );
     CREATE TABLE worker_tags (
        worker_id TEXT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (worker_id, key)
     );
     CREATE TABLE code_history (
        worker_id TEXT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        source TEXT NOT NULL,
        url TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (worker_id, version)
     );
     CREATE TABLE worker_state (
        worker_id TEXT NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (worker_id, key)
     );",
    // 2: a worker's own limits (issue 13); NULL is the engine's setting, so rows written by
    // older daemons read as workers without limits.
    "ALTER TABLE workers ADD COLUMN memory_limit_bytes INTEGER;",
    // 3: cluster placement (`replicas`; NULL = every daemon).
    "ALTER TABLE workers ADD COLUMN replicas INTEGER;",
];

/// SQLite-backed registry.
#[derive(Debug)]
pub struct SqliteStore {
    /// Held only for the duration of one transaction, never across an `.await`.
    conn: Mutex<Connection>,
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Sql { op, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, RegistryError> {
        let open_err = |source| RegistryError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (it rolls
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.locked()
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql(op))?;
        let out = f(&tx)?;
        tx.commit().map_err(sql(op))?;
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), RegistryError> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| RegistryError::Migrate { version: 0, source })?
        .try_into()
        .unwrap_or(0);
    if current > MIGRATIONS.len() {
        return Err(RegistryError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i + 1;
        let err = |source| RegistryError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(step).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

const WORKER_COLUMNS: &str = "id, mime_type, topic, grp, isolation, message_timeout_seconds, \
    max_concurrency, status, desired_running, last_error, code_sha256, code_size, code_source, \
    code_url, created_at, updated_at, memory_limit_bytes, replicas";

/// A stored status column, or the corruption it shows.
fn parse_status(id: &str, status: &str) -> Result<Status, RegistryError> {
    Status::parse(status).ok_or_else(|| RegistryError::Corrupt {
        id: id.to_owned(),
        what: format!("unknown status '{status}'"),
    })
}

/// A `workers` row before its config and tags are attached.
fn row_to_worker(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<WorkerRecord, RegistryError>> {
    let id: String = row.get(0)?;
    let isolation: String = row.get(4)?;
    let status: String = row.get(7)?;
    let last_error: Option<String> = row.get(9)?;
    let source: String = row.get(12)?;
    let memory_limit: Option<i64> = row.get(16)?;
    let corrupt = |what: String| RegistryError::Corrupt {
        id: id.clone(),
        what,
    };
    let Some(isolation) = Isolation::parse(&isolation) else {
        return Ok(Err(corrupt(format!("unknown isolation '{isolation}'"))));
    };
    let status = match parse_status(&id, &status) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let Some(source) = CodeSourceKind::parse(&source) else {
        return Ok(Err(corrupt(format!("unknown code source '{source}'"))));
    };
    let memory_bytes = match memory_limit.map(u64::try_from) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Ok(Err(corrupt("memory_limit_bytes is negative".to_owned()))),
    };
    let last_error = match last_error {
        None => None,
        Some(text) => match serde_json::from_str::<LastError>(&text) {
            Ok(e) => Some(e),
            Err(e) => return Ok(Err(corrupt(format!("last_error is not valid JSON: {e}")))),
        },
    };
    Ok(Ok(WorkerRecord {
        mime_type: row.get(1)?,
        topic: row.get(2)?,
        group: row.get(3)?,
        config: Vec::new(),
        tags: BTreeMap::new(),
        isolation,
        limits: crate::worker_limits::WorkerLimits { memory_bytes },
        message_timeout_seconds: row.get(5)?,
        max_concurrency: row.get(6)?,
        status,
        desired_running: row.get(8)?,
        last_error,
        code: CodeRef {
            sha256: row.get(10)?,
            size: row.get(11)?,
            source,
            url: row.get(13)?,
        },
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        replicas: row.get(17)?,
        id,
    }))
}

fn attach_details(conn: &Connection, w: &mut WorkerRecord) -> Result<(), RegistryError> {
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM worker_config WHERE worker_id = ?1 ORDER BY pos")
        .map_err(sql("read config"))?;
    w.config = stmt
        .query_map([&w.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql("read config"))?;
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM worker_tags WHERE worker_id = ?1")
        .map_err(sql("read tags"))?;
    w.tags = stmt
        .query_map([&w.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql("read tags"))?;
    Ok(())
}

/// SQLite integers are signed: a limit past `i64::MAX` cannot be stored (the API allows 1 TiB).
fn memory_limit_sql(l: &WorkerLimits) -> Result<Option<i64>, RegistryError> {
    l.memory_bytes
        .map(i64::try_from)
        .transpose()
        .map_err(|_| RegistryError::Sql {
            op: "store limits",
            source: rusqlite::Error::IntegralValueOutOfRange(16, i64::MAX),
        })
}

fn exists(tx: &Connection, id: &str) -> Result<bool, RegistryError> {
    tx.query_row("SELECT 1 FROM workers WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(sql("look up worker"))
}

fn insert_history(
    tx: &Connection,
    id: &str,
    code: &CodeRef,
    at: &str,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO code_history (worker_id, version, sha256, size, source, url, created_at)
         VALUES (?1, (SELECT COALESCE(MAX(version), 0) + 1 FROM code_history WHERE worker_id = ?1),
                 ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            code.sha256,
            code.size,
            code.source.as_str(),
            code.url,
            at
        ],
    )
    .map_err(sql("append history"))?;
    Ok(())
}

/// Inserts the `workers` row (or, for the cluster's materialised view, replaces its
/// columns in place so list order stays), its config and its tags.
fn insert_worker(tx: &Connection, w: &WorkerRecord) -> Result<(), RegistryError> {
    let last_error = w
        .last_error
        .as_ref()
        .and_then(|e| serde_json::to_string(e).ok());
    tx.execute(
        &format!(
            "INSERT INTO workers ({WORKER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
             ON CONFLICT (id) DO UPDATE SET mime_type = excluded.mime_type, topic = excluded.topic,
               grp = excluded.grp, isolation = excluded.isolation,
               message_timeout_seconds = excluded.message_timeout_seconds,
               max_concurrency = excluded.max_concurrency, status = excluded.status,
               desired_running = excluded.desired_running, last_error = excluded.last_error,
               code_sha256 = excluded.code_sha256, code_size = excluded.code_size,
               code_source = excluded.code_source, code_url = excluded.code_url,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               memory_limit_bytes = excluded.memory_limit_bytes, replicas = excluded.replicas"
        ),
        params![
            w.id,
            w.mime_type,
            w.topic,
            w.group,
            w.isolation.as_str(),
            w.message_timeout_seconds,
            w.max_concurrency,
            w.status.as_str(),
            w.desired_running,
            last_error,
            w.code.sha256,
            w.code.size,
            w.code.source.as_str(),
            w.code.url,
            w.created_at,
            w.updated_at,
            memory_limit_sql(&w.limits)?,
            w.replicas
        ],
    )
    .map_err(sql("insert worker"))?;
    tx.execute("DELETE FROM worker_config WHERE worker_id = ?1", [&w.id])
        .map_err(sql("insert config"))?;
    for (pos, (k, v)) in w.config.iter().enumerate() {
        tx.execute(
            "INSERT INTO worker_config (worker_id, pos, key, value) VALUES (?1, ?2, ?3, ?4)",
            params![w.id, pos as i64, k, v],
        )
        .map_err(sql("insert config"))?;
    }
    tx.execute("DELETE FROM worker_tags WHERE worker_id = ?1", [&w.id])
        .map_err(sql("insert tags"))?;
    for (k, v) in &w.tags {
        tx.execute(
            "INSERT INTO worker_tags (worker_id, key, value) VALUES (?1, ?2, ?3)",
            params![w.id, k, v],
        )
        .map_err(sql("insert tags"))?;
    }
    Ok(())
}

impl SqliteStore {
    /// Cluster mode: makes the local view of one worker exactly `w` with `history` (applied
    /// from the shared registry; the version numbers are kept as given).
    pub fn put_view(
        &self,
        w: &WorkerRecord,
        history: &[HistoryEntry],
    ) -> Result<(), RegistryError> {
        self.write("apply a shared registry change", |tx| {
            insert_worker(tx, w)?;
            tx.execute("DELETE FROM code_history WHERE worker_id = ?1", [&w.id])
                .map_err(sql("replace history"))?;
            for h in history {
                tx.execute(
                    "INSERT INTO code_history (worker_id, version, sha256, size, source, url, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        w.id,
                        h.version,
                        h.code.sha256,
                        h.code.size,
                        h.code.source.as_str(),
                        h.code.url,
                        h.created_at
                    ],
                )
                .map_err(sql("replace history"))?;
            }
            Ok(())
        })
    }
}

impl Store for SqliteStore {
    fn create_worker(&self, w: &WorkerRecord) -> Result<(), RegistryError> {
        self.write("create worker", |tx| {
            if exists(tx, &w.id)? {
                return Err(RegistryError::Exists(w.id.clone()));
            }
            insert_worker(tx, w)?;
            insert_history(tx, &w.id, &w.code, &w.created_at)
        })
    }

    fn get_worker(&self, id: &str) -> Result<Option<WorkerRecord>, RegistryError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?1"),
                [id],
                row_to_worker,
            )
            .optional()
            .map_err(sql("read worker"))?;
        match row {
            None => Ok(None),
            Some(w) => {
                let mut w = w?;
                attach_details(&conn, &mut w)?;
                Ok(Some(w))
            }
        }
    }

    fn worker_status_now(&self, id: &str) -> Option<Result<Option<Status>, RegistryError>> {
        // Only with the connection free: a writer holding it may be inside an fsync.
        let conn = self.conn.try_locked()?;
        let read = || -> Result<Option<Status>, RegistryError> {
            let mut stmt = conn
                .prepare_cached("SELECT status FROM workers WHERE id = ?1")
                .map_err(sql("read worker status"))?;
            let status: Option<String> = stmt
                .query_row([id], |row| row.get(0))
                .optional()
                .map_err(sql("read worker status"))?;
            status.map(|s| parse_status(id, &s)).transpose()
        };
        Some(read())
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {WORKER_COLUMNS} FROM workers ORDER BY rowid"
            ))
            .map_err(sql("list workers"))?;
        let rows: Vec<Result<WorkerRecord, RegistryError>> = stmt
            .query_map([], row_to_worker)
            .and_then(|rows| rows.collect())
            .map_err(sql("list workers"))?;
        let mut out = Vec::with_capacity(rows.len());
        for w in rows {
            let mut w = w?;
            attach_details(&conn, &mut w)?;
            out.push(w);
        }
        Ok(out)
    }

    fn delete_worker(&self, id: &str) -> Result<bool, RegistryError> {
        self.write("delete worker", |tx| {
            tx.execute("DELETE FROM workers WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(sql("delete worker"))
        })
    }

    fn set_code(&self, id: &str, code: &CodeRef, at: &str) -> Result<bool, RegistryError> {
        self.write("set code", |tx| {
            let n = tx
                .execute(
                    "UPDATE workers SET code_sha256 = ?2, code_size = ?3, code_source = ?4, code_url = ?5, updated_at = ?6 WHERE id = ?1",
                    params![id, code.sha256, code.size, code.source.as_str(), code.url, at],
                )
                .map_err(sql("set code"))?;
            if n == 0 {
                return Ok(false);
            }
            insert_history(tx, id, code, at)?;
            Ok(true)
        })
    }

    fn set_limits(
        &self,
        id: &str,
        limits: &WorkerLimits,
        isolation: Isolation,
        at: &str,
    ) -> Result<bool, RegistryError> {
        self.write("set limits", |tx| {
            tx.execute(
                "UPDATE workers SET memory_limit_bytes = ?2, isolation = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, memory_limit_sql(limits)?, isolation.as_str(), at],
            )
            .map(|n| n > 0)
            .map_err(sql("set limits"))
        })
    }

    fn history(&self, id: &str) -> Result<Option<Vec<HistoryEntry>>, RegistryError> {
        let conn = self.conn();
        if !exists(&conn, id)? {
            return Ok(None);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, sha256, size, source, url, created_at FROM code_history
                 WHERE worker_id = ?1 ORDER BY version",
            )
            .map_err(sql("read history"))?;
        let rows: Vec<(u32, String, u64, String, Option<String>, String)> = stmt
            .query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(sql("read history"))?;
        rows.into_iter()
            .map(|(version, sha256, size, source, url, created_at)| {
                let source =
                    CodeSourceKind::parse(&source).ok_or_else(|| RegistryError::Corrupt {
                        id: id.to_owned(),
                        what: format!("history version {version} has unknown source '{source}'"),
                    })?;
                Ok(HistoryEntry {
                    version,
                    code: CodeRef {
                        sha256,
                        size,
                        source,
                        url,
                    },
                    created_at,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn set_status(
        &self,
        id: &str,
        status: Status,
        desired_running: Option<bool>,
        last_error: Option<&LastError>,
    ) -> Result<bool, RegistryError> {
        let last_error = match status {
            Status::Error => last_error.and_then(|e| serde_json::to_string(e).ok()),
            Status::Running | Status::Stopped => None,
        };
        let now = super::now_rfc3339();
        self.write("set status", |tx| {
            tx.execute(
                "UPDATE workers SET status = ?2, last_error = ?3,
                        desired_running = COALESCE(?4, desired_running), updated_at = ?5
                 WHERE id = ?1",
                params![id, status.as_str(), last_error, desired_running, now],
            )
            .map(|n| n > 0)
            .map_err(sql("set status"))
        })
    }

    fn set_tags(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<bool, RegistryError> {
        let now = super::now_rfc3339();
        self.write("set tags", |tx| {
            if !exists(tx, id)? {
                return Ok(false);
            }
            tx.execute("DELETE FROM worker_tags WHERE worker_id = ?1", [id])
                .map_err(sql("set tags"))?;
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO worker_tags (worker_id, key, value) VALUES (?1, ?2, ?3)",
                    params![id, k, v],
                )
                .map_err(sql("set tags"))?;
            }
            tx.execute(
                "UPDATE workers SET updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )
            .map_err(sql("set tags"))?;
            Ok(true)
        })
    }

    fn set_tag(
        &self,
        id: &str,
        key: &str,
        value: &str,
        max_tags: usize,
    ) -> Result<TagOutcome, RegistryError> {
        let now = super::now_rfc3339();
        self.write("set tag", |tx| {
            if !exists(tx, id)? {
                return Ok(TagOutcome::NotFound);
            }
            let (count, present): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(key = ?2), 0) FROM worker_tags WHERE worker_id = ?1",
                    params![id, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql("set tag"))?;
            if present == 0 && usize::try_from(count).unwrap_or(usize::MAX) >= max_tags {
                return Ok(TagOutcome::LimitReached);
            }
            tx.execute(
                "INSERT INTO worker_tags (worker_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (worker_id, key) DO UPDATE SET value = excluded.value",
                params![id, key, value],
            )
            .map_err(sql("set tag"))?;
            tx.execute("UPDATE workers SET updated_at = ?2 WHERE id = ?1", params![id, now])
                .map_err(sql("set tag"))?;
            Ok(TagOutcome::Set)
        })
    }

    fn delete_tag(&self, id: &str, key: &str) -> Result<Option<bool>, RegistryError> {
        self.write("delete tag", |tx| {
            if !exists(tx, id)? {
                return Ok(None);
            }
            tx.execute(
                "DELETE FROM worker_tags WHERE worker_id = ?1 AND key = ?2",
                params![id, key],
            )
            .map(|n| Some(n > 0))
            .map_err(sql("delete tag"))
        })
    }

    fn state_get(&self, id: &str, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        self.conn()
            .query_row(
                "SELECT value FROM worker_state WHERE worker_id = ?1 AND key = ?2",
                params![id, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read state"))
    }

    fn state_set(
        &self,
        id: &str,
        key: &str,
        value: &[u8],
        max_keys: u64,
    ) -> Result<TagOutcome, RegistryError> {
        self.write("write state", |tx| {
            if !exists(tx, id)? {
                return Ok(TagOutcome::NotFound);
            }
            let (count, present): (i64, i64) = tx
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(key = ?2), 0) FROM worker_state WHERE worker_id = ?1",
                    params![id, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql("write state"))?;
            if present == 0 && u64::try_from(count).unwrap_or(u64::MAX) >= max_keys {
                return Ok(TagOutcome::LimitReached);
            }
            tx.execute(
                "INSERT INTO worker_state (worker_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (worker_id, key) DO UPDATE SET value = excluded.value",
                params![id, key, value],
            )
            .map_err(sql("write state"))?;
            Ok(TagOutcome::Set)
        })
    }

    fn state_delete(&self, id: &str, key: &str) -> Result<bool, RegistryError> {
        self.write("delete state", |tx| {
            tx.execute(
                "DELETE FROM worker_state WHERE worker_id = ?1 AND key = ?2",
                params![id, key],
            )
            .map(|n| n > 0)
            .map_err(sql("delete state"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> WorkerRecord {
        WorkerRecord {
            id: id.to_owned(),
            mime_type: "application/x-native-dll".into(),
            topic: "t".into(),
            group: Some("g".into()),
            config: vec![("zeta".into(), "1".into()), ("alpha".into(), "2".into())],
            tags: [("k".to_owned(), "v".to_owned())].into(),
            isolation: Isolation::Dedicated,
            limits: WorkerLimits::default(),
            message_timeout_seconds: 30,
            max_concurrency: 2,
            status: Status::Stopped,
            desired_running: false,
            last_error: None,
            code: CodeRef {
                sha256: "ab".into(),
                size: 3,
                source: CodeSourceKind::Content,
                url: None,
            },
            replicas: Some(2),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_worker(&worker("a")).unwrap();
            s.create_worker(&worker("b")).unwrap();
            assert!(matches!(
                s.create_worker(&worker("a")),
                Err(RegistryError::Exists(_))
            ));
            let code2 = CodeRef {
                sha256: "cd".into(),
                size: 9,
                source: CodeSourceKind::Url,
                url: Some("http://x/y".into()),
            };
            assert!(s.set_code("a", &code2, "2026-01-02T00:00:00.000Z").unwrap());
            let err = LastError {
                error_type: "timeout".into(),
                message: "slow".into(),
                at: "now".into(),
            };
            assert!(
                s.set_status("a", Status::Error, Some(true), Some(&err))
                    .unwrap()
            );
            assert_eq!(s.state_set("a", "k", b"v", 2).unwrap(), TagOutcome::Set);
            assert_eq!(s.state_set("a", "k2", b"v", 2).unwrap(), TagOutcome::Set);
            assert_eq!(
                s.state_set("a", "k3", b"v", 2).unwrap(),
                TagOutcome::LimitReached,
                "STATE_MAX_KEYS counts keys per worker"
            );
            assert_eq!(s.state_set("a", "k", b"v", 2).unwrap(), TagOutcome::Set);
            assert_eq!(
                s.state_set("zz", "k", b"v", 2).unwrap(),
                TagOutcome::NotFound
            );
        }
        let s = SqliteStore::open(&path).unwrap();
        let all = s.list_workers().unwrap();
        assert_eq!(
            all.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let a = s.get_worker("a").unwrap().unwrap();
        // Config keeps its order.
        assert_eq!(a.config[0].0, "zeta");
        assert_eq!(a.status, Status::Error);
        assert!(a.desired_running);
        assert_eq!(a.last_error.unwrap().error_type, "timeout");
        assert_eq!(a.code.sha256, "cd");
        let h = s.history("a").unwrap().unwrap();
        assert_eq!(h.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(h[0].code.sha256, "ab");
        assert_eq!(s.state_get("a", "k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(s.delete_worker("a").unwrap());
        assert!(s.history("a").unwrap().is_none());
        assert!(
            s.state_get("a", "k").unwrap().is_none(),
            "state goes with the worker"
        );
    }

    #[test]
    fn tag_limit_counts_only_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("r.db")).unwrap();
        s.create_worker(&worker("a")).unwrap();
        assert_eq!(s.set_tag("a", "k2", "v", 2).unwrap(), TagOutcome::Set);
        assert_eq!(
            s.set_tag("a", "k3", "v", 2).unwrap(),
            TagOutcome::LimitReached
        );
        assert_eq!(s.set_tag("a", "k2", "w", 2).unwrap(), TagOutcome::Set);
        assert_eq!(s.set_tag("zz", "k", "v", 2).unwrap(), TagOutcome::NotFound);
        assert_eq!(s.delete_tag("a", "k2").unwrap(), Some(true));
        assert_eq!(s.delete_tag("a", "k2").unwrap(), Some(false));
    }

    #[test]
    fn limits_round_trip_and_a_version_1_database_opens_with_workers_without_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            // A registry as the first schema left it, with one worker.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO workers (id, mime_type, topic, grp, isolation, message_timeout_seconds, \
                 max_concurrency, status, desired_running, last_error, code_sha256, code_size, \
                 code_source, code_url, created_at, updated_at) VALUES ('old', 'application/x-native-dll', \
                 't', NULL, 'shared', 30, 1, 'STOPPED', 0, NULL, 'ab', 3, 'content', NULL, 'x', 'x')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let old = s.get_worker("old").unwrap().unwrap();
        assert_eq!(old.limits, WorkerLimits::default());
        assert_eq!(old.isolation, Isolation::Shared);

        let mut w = worker("lim");
        w.limits.memory_bytes = Some(256 << 20);
        s.create_worker(&w).unwrap();
        assert_eq!(
            s.get_worker("lim").unwrap().unwrap().limits.memory_bytes,
            Some(256 << 20)
        );
        let tighter = WorkerLimits {
            memory_bytes: Some(128 << 20),
        };
        assert!(
            s.set_limits("old", &tighter, Isolation::Dedicated, "y")
                .unwrap()
        );
        let old = s.get_worker("old").unwrap().unwrap();
        assert_eq!(old.limits, tighter);
        assert_eq!(old.isolation, Isolation::Dedicated);
        assert!(
            !s.set_limits("nobody", &tighter, Isolation::Dedicated, "y")
                .unwrap()
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            SqliteStore::open(&path),
            Err(RegistryError::TooNew { found: 99, .. })
        ));
    }
}
