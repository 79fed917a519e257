//! The test harness shared by the end-to-end tests: builds fixture workers once per test run,
//! packs them as `.nupkg`, and starts real daemons on loopback ports ([`daemon`]).
//!
//! Fixtures are compiled into `target/fixtures/`, keyed by a hash of their sources, headers and
//! flags, under a file lock: parallel test binaries and repeated runs build each one once.

pub mod chromium;
pub mod daemon;
pub mod dotnet;
pub mod fstree;
pub mod minisign;
pub mod native;
pub mod nats;
pub mod nupkg;
pub mod procs;
pub mod sse;
pub mod wheel;

use std::path::{Path, PathBuf};

/// The workspace root (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Cargo's target directory, found from the running test binary
/// (`<target>/<profile>/deps/<test-exe>`), so that `CARGO_TARGET_DIR` is honoured.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir);
        return if p.is_absolute() {
            p
        } else {
            workspace_root().join(p)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "deps"))
                .and_then(|deps| deps.parent()?.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where built fixtures are cached: `<target>/fixtures/<kind>`.
pub fn fixtures_out(kind: &str) -> PathBuf {
    target_dir().join("fixtures").join(kind)
}

/// Where fixture sources live: `tests/fixtures/<kind>`.
pub fn fixtures_src(kind: &str) -> PathBuf {
    workspace_root().join("tests").join("fixtures").join(kind)
}

/// The directory of the workspace's built binaries for the current profile
/// (`target/debug` when the tests run in debug).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "deps"))
                .and_then(|deps| deps.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| target_dir().join("debug"))
}

/// Runs `f` while holding an exclusive lock on `<dir>/.lock`, creating `dir` first.
/// Serialises fixture builds across test threads and test processes.
pub fn with_dir_lock<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("cannot create fixture dir {}: {e}", dir.display()));
    let lock_path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    let out = f();
    // Dropping the file releases the lock.
    drop(lock);
    out
}

/// Hex sha256 of everything that determines a build's output.
pub fn content_key(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..12])
}
