//! `text/x-python` code: the blob is the worker's source itself, not an archive.
//!
//! [`inspect`] checks what can be checked without Python (size, UTF-8, no NUL byte, a
//! `Process` definition at the start of a line); the import policy, which needs Python's own
//! `ast`, is the supervisor's (`supervisor/src/python_policy.rs`). [`extract`] writes the
//! source as `<root>/<sha256>/worker.py` (temp folder + rename, like a package).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{EngineKind, Limits, PackageError, PackageInfo, Problem, sha256_hex};

/// The file name the host loads (`host-runner`'s `engine::python::WORKER_FILE`).
pub const WORKER_FILE: &str = "worker.py";

/// Validates Python source as a `text/x-python` worker.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<PackageInfo, PackageError> {
    let size = bytes.len() as u64;
    let mut problems = Vec::new();
    if size > limits.max_entry_bytes {
        problems.push(Problem::PackageTooLarge {
            size,
            limit: limits.max_entry_bytes,
        });
    }
    match std::str::from_utf8(bytes) {
        Err(e) => problems.push(Problem::PythonSource(format!(
            "the source is not UTF-8 (first bad byte at offset {}); save it as UTF-8",
            e.valid_up_to()
        ))),
        Ok(text) => {
            if text.contains('\0') {
                problems.push(Problem::PythonSource(
                    "the source contains a NUL byte; Python refuses it".into(),
                ));
            } else if !defines_process(text) {
                problems.push(Problem::PythonSource(
                    "the source defines no module-level `def Process(event):` (or `async def \
                     Process`); the engine calls that function for each event"
                        .into(),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(PackageError::Invalid { problems });
    }
    Ok(PackageInfo {
        id: "worker".into(),
        version: String::new(),
        abi_version: 1,
        library: "worker".into(),
        entry_point: "Process".into(),
        free_result: String::new(),
        engine: EngineKind::Python,
        library_path: WORKER_FILE.into(),
        rid: None,
        tfm: None,
        sha256: sha256_hex(bytes),
        warnings: Vec::new(),
        size,
    })
}

/// A `def Process` or `async def Process` at column 0 (the host reports anything subtler,
/// e.g. a `Process = ...` assignment, which also works, only at load).
fn defines_process(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.strip_prefix("async ").map_or(l, str::trim_start);
        l.strip_prefix("def ")
            .map(str::trim_start)
            .is_some_and(|rest| {
                rest.strip_prefix("Process")
                    .is_some_and(|r| r.trim_start().starts_with('('))
            })
            || l.starts_with("Process =")
            || l.starts_with("Process=")
    })
}

/// Writes the source as `<root>/<sha256>/worker.py`; returns the folder.
pub fn extract(bytes: &[u8], info: &PackageInfo, root: &Path) -> Result<PathBuf, PackageError> {
    let actual = sha256_hex(bytes);
    if actual != info.sha256 {
        return Err(PackageError::InfoMismatch {
            expected: info.sha256.clone(),
            actual,
        });
    }
    let sha = info.sha256.as_str();
    let io_err = |path: &Path, step: &'static str| {
        let path = path.to_path_buf();
        move |source: std::io::Error| PackageError::Io {
            sha256: sha.to_string(),
            path,
            step,
            source,
        }
    };
    let target = root.join(sha);
    if target.join(WORKER_FILE).is_file() {
        return Ok(target);
    }
    fs::create_dir_all(root).map_err(io_err(root, "creating the extraction root"))?;
    // `.tmp-*`, like package::extract's folders: the daemon sweeps them at start.
    let temp = root.join(format!(
        ".tmp-py-{sha}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    DirBuilder::new()
        .mode(0o755)
        .create(&temp)
        .map_err(io_err(&temp, "creating a temporary folder"))?;
    let result = (|| {
        let file = temp.join(WORKER_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&file)
            .map_err(io_err(&file, "creating worker.py"))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&file, "writing worker.py"))?;
        match fs::rename(&temp, &target) {
            Ok(()) => Ok(()),
            // A concurrent extraction of the same bytes won: same content.
            Err(_) if target.join(WORKER_FILE).is_file() => Ok(()),
            Err(e) => Err(io_err(&target, "moving the folder into place")(e)),
        }
    })();
    if temp.exists() {
        let _ = fs::remove_dir_all(&temp);
    }
    result.map(|()| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_with_process_passes_and_is_written_as_worker_py() {
        let src = b"import json\n\nasync def Process(event):\n    return None\n";
        let info = inspect(src, &Limits::default()).expect("valid");
        assert_eq!(info.engine, EngineKind::Python);
        assert_eq!(info.library_path, WORKER_FILE);
        let root = tempfile::tempdir().expect("tempdir");
        let dir = extract(src, &info, root.path()).expect("extract");
        assert_eq!(fs::read(dir.join(WORKER_FILE)).expect("read"), src);
        // Idempotent.
        assert_eq!(extract(src, &info, root.path()).expect("again"), dir);
    }

    #[test]
    fn bad_sources_name_the_problem() {
        let l = Limits::default();
        let e = inspect(b"def handle(e):\n    pass\n", &l).unwrap_err();
        assert!(e.to_string().contains("def Process(event)"), "{e}");
        let e = inspect(b"def Process(e):\n    return '\xff'\n", &l).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        let e = inspect(b"def Process(e):\n\0", &l).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        let small = Limits {
            max_entry_bytes: 8,
            ..Limits::default()
        };
        assert!(inspect(b"def Process(e): pass\n", &small).is_err());
    }
}
