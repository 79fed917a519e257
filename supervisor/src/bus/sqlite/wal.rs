//! The WAL file's room (`BUS_WAL_PREALLOCATE`): written with zeros at open, up to what one
//! checkpoint cycle uses, so that commits overwrite blocks the file already has instead of
//! growing it.
//!
//! SQLite appends each commit's frames to `bus.db-wal` until a checkpoint (every
//! [`AUTOCHECKPOINT_PAGES`] pages), then writes it again from its start. While the file grows,
//! every commit's fsync also has to write the new blocks' allocation and the file's size
//! (docs/benchmarks.md, "Seventh pass": 143-211 us per 16 KiB append against 91-112 us for
//! an overwrite on this disk); a new WAL grows for the first ~33 MiB after every start (SQLite
//! deletes it at a clean close). Zeros past SQLite's last frame are what it expects there: a
//! frame is only valid with the header's salt and a checksum chained from the frames before
//! it, so recovery stops at the first zero frame, as it stops at the old frames of an earlier
//! cycle when it reuses the file. Only bytes past the file's current end are written, before
//! the writer thread starts, so SQLite's own frames are never touched.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// `PRAGMA wal_autocheckpoint` (pages), set by `store::init`.
pub(super) const AUTOCHECKPOINT_PAGES: u64 = 8_000;

/// Frames beyond the checkpoint threshold that are preallocated too: the commit that crosses
/// it is written whole before the checkpoint runs.
const SLACK_FRAMES: u64 = 256;

/// WAL header and frame header sizes (sqlite.org/fileformat2.html, "WAL File Format").
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// Zeros written per system call.
const CHUNK: usize = 1 << 20;

/// The WAL file of the store at `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The size one checkpoint cycle writes, for the connection's page size.
pub(super) fn cycle_bytes(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page = u64::try_from(page).unwrap_or(4_096);
    Ok(WAL_HEADER + (AUTOCHECKPOINT_PAGES + SLACK_FRAMES) * (page + FRAME_HEADER))
}

/// Extends the WAL file of the store at `db` with zeros to `size` bytes and makes that
/// durable; returns how many bytes it added (0: the file was already that large, or SQLite
/// has not created it). Call it while the store's connection is open (so the file exists and
/// SQLite will not delete it) and before anything writes through it concurrently.
pub(super) fn preallocate(db: &Path, size: u64) -> io::Result<u64> {
    let file = match std::fs::OpenOptions::new().write(true).open(wal_path(db)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let start = file.metadata()?.len();
    if start >= size {
        return Ok(0);
    }
    let zeros = vec![0u8; CHUNK];
    let mut at = start;
    while at < size {
        let n = usize::try_from(size - at).unwrap_or(CHUNK).min(CHUNK);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    // The blocks and the size must be on disk before a commit's fdatasync counts on them.
    file.sync_all()?;
    Ok(size - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_grows_to_the_size_once_and_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bus.db");
        std::fs::write(wal_path(&db), b"frames").unwrap();
        assert_eq!(
            preallocate(&db, 3 * CHUNK as u64 + 5).unwrap(),
            3 * CHUNK as u64 - 1
        );
        let bytes = std::fs::read(wal_path(&db)).unwrap();
        assert_eq!(bytes.len(), 3 * CHUNK + 5);
        assert_eq!(&bytes[..6], b"frames");
        assert!(bytes[6..].iter().all(|b| *b == 0));
        assert_eq!(preallocate(&db, 1_000).unwrap(), 0, "never shrinks");
        assert_eq!(preallocate(&dir.path().join("none.db"), 1_000).unwrap(), 0);
    }

    #[test]
    fn a_cycle_is_the_autocheckpoint_pages_with_their_frame_headers() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA page_size=4096").unwrap();
        assert_eq!(cycle_bytes(&conn).unwrap(), 32 + 8_256 * 4_120);
    }
}
