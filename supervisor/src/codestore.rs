//! Content-addressed code blobs and their extracted packages.
//!
//! Layout under the data directory:
//! - `code/<sha256>`: the package exactly as uploaded or downloaded;
//! - `packages/<sha256>/`: the package extracted (what a host loads from).
//!
//! Both are written under a temporary name and renamed into place (the extraction by
//! `wm_shared::package::extract`), so a crash never leaves a half-written blob or directory
//! under its final name; identical code is stored once.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use wm_shared::package::{self, Limits, PackageInfo};

use crate::package_guard;

/// Why a blob could not be stored or extracted.
#[derive(Debug, thiserror::Error)]
pub enum CodeStoreError {
    /// A file system step failed.
    #[error("cannot {step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The package could not be extracted.
    #[error("cannot extract package {sha256}: {source}")]
    Extract {
        /// Which package.
        sha256: String,
        /// Why.
        #[source]
        source: package::PackageError,
    },
    /// A name that is not a sha256 was asked for.
    #[error("'{0}' is not a sha256 hex digest")]
    BadDigest(String),
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CodeStoreError + use<> {
    let path = path.to_path_buf();
    move |source| CodeStoreError::Io { step, path, source }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The blob and package directories.
#[derive(Debug, Clone)]
pub struct CodeStore {
    code: PathBuf,
    packages: PathBuf,
}

impl CodeStore {
    /// Creates `code/` and `packages/` under `data_dir` if needed.
    pub fn open(data_dir: &Path) -> Result<CodeStore, CodeStoreError> {
        let code = data_dir.join("code");
        let packages = data_dir.join("packages");
        std::fs::create_dir_all(&code).map_err(io("create", &code))?;
        std::fs::create_dir_all(&packages).map_err(io("create", &packages))?;
        // Hosts (which may run under another uid) reach `packages/<sha>/` by name; nobody
        // lists the folder.
        std::fs::set_permissions(&packages, std::fs::Permissions::from_mode(0o711))
            .map_err(io("set the permissions of", &packages))?;
        Ok(CodeStore { code, packages })
    }

    /// Where the blob with this digest lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.code.join(sha256)
    }

    /// Where the package with this digest is extracted.
    pub fn package_dir(&self, sha256: &str) -> PathBuf {
        self.packages.join(sha256)
    }

    /// Stores `bytes` durably under their digest and returns it. Storing the same bytes twice
    /// is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<String, CodeStoreError> {
        let sha = sha256_hex(bytes);
        let path = self.blob_path(&sha);
        if path.exists() {
            return Ok(sha);
        }
        let tmp = self
            .code
            .join(format!(".{sha}.{}.tmp", uuid::Uuid::new_v4()));
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        // Make the rename itself durable.
        if let Ok(dir) = std::fs::File::open(&self.code) {
            let _ = dir.sync_all();
        }
        Ok(sha)
    }

    /// Reads a stored blob.
    pub fn read(&self, sha256: &str) -> Result<Vec<u8>, CodeStoreError> {
        if !is_digest(sha256) {
            return Err(CodeStoreError::BadDigest(sha256.to_owned()));
        }
        let path = self.blob_path(sha256);
        std::fs::read(&path).map_err(io("read", &path))
    }

    /// Extracts a package [`package::inspect`] accepted into `packages/<sha256>/` (atomic and
    /// idempotent: see [`package::extract`]); returns its directory. An existing folder is
    /// reused only if it still matches the manifest written when it was extracted; otherwise
    /// it is discarded and extracted again (`package_guard`).
    pub fn extract(
        &self,
        bytes: &[u8],
        info: &PackageInfo,
        limits: &Limits,
    ) -> Result<PathBuf, CodeStoreError> {
        if info.engine == package::EngineKind::CSharpSource {
            return crate::csharp_source::store(
                &crate::csharp_source::root(&self.packages),
                bytes,
                info,
            );
        }
        let dir = self.package_dir(&info.sha256);
        match package_guard::check(&dir) {
            package_guard::Check::Intact => return Ok(dir),
            package_guard::Check::Missing => {}
            package_guard::Check::Tampered(why) => {
                tracing::warn!(sha256 = %info.sha256, dir = %dir.display(),
                    "extracted package differs from what was extracted ({why}); extracting it again");
                package_guard::discard(&dir).map_err(io("discard a tampered package", &dir))?;
            }
        }
        let dir = package::extract(bytes, info, &self.packages, limits).map_err(|source| {
            CodeStoreError::Extract {
                sha256: info.sha256.clone(),
                source,
            }
        })?;
        package_guard::seal(&dir).map_err(io("seal the extracted package", &dir))?;
        Ok(dir)
    }

    /// Removes leftovers of interrupted writes (`.*.tmp`), at start.
    pub fn sweep_temporaries(&self) {
        for dir in [&self.code, &self.packages] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // Ours end in `.tmp`; `package::extract` names its folders `.tmp-*`.
                if name.starts_with(".tmp-") || (name.starts_with('.') && name.ends_with(".tmp")) {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        // A sealed tree is read-only; a non-root daemon must loosen it first.
                        let _ = package_guard::make_removable(&p);
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = CodeStore::open(dir.path()).unwrap();
        let a = s.put(b"hello").unwrap();
        assert_eq!(
            a,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.put(b"hello").unwrap(), a);
        assert_eq!(s.read(&a).unwrap(), b"hello");
        assert!(matches!(
            s.read("../etc/passwd"),
            Err(CodeStoreError::BadDigest(_))
        ));
        std::fs::write(dir.path().join("code/.x.tmp"), b"half").unwrap();
        s.sweep_temporaries();
        assert!(!dir.path().join("code/.x.tmp").exists());
    }
}
