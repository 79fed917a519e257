//! The supervisor's side of the C# source engine (`text/x-csharp`). The supervisor never
//! compiles: a .NET host does (`host-runner/dotnet/bridge/CSharpSource.cs`). Here:
//!
//! - [`store`]: the source as `<data>/csharp/<sha256>/worker.cs` (the folder a host is given
//!   as its package directory);
//! - [`harvest`]: the compile cache. A host's file system is read-only except its private
//!   temp folder, so the host writes its compiled image to `$TMPDIR/csharp/<key>.dll`; after
//!   a load succeeds the pool copies it here into the source's folder, where every later load
//!   (respawn, reload, another host) finds it and skips Roslyn. The key starts with the
//!   source's sha256, so a host's output can only land in the folder of the source it was
//!   asked to compile;
//! - [`diagnostics`]: a host's compile failure as the API's `compile_failed` details;
//! - [`roslyn_unavailable`]: what `/v1/engines` says when Roslyn is missing.
//!
//! Trust: the cached image comes from a host that may run other workers of the shared .NET
//! host, so a hostile worker of that host could swap it before it is copied. It would run
//! under the same sandbox as any worker; the isolation lost is between C# source workers that
//! share a host, which share a process anyway. `isolation: dedicated` keeps a source worker's
//! compile in a host of its own.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use wm_shared::package::PackageInfo;
use wm_shared::package::csharp_source::SOURCE_FILE;

use crate::codestore::{CodeStoreError, sha256_hex};

/// Largest compiled image copied into the cache (a source file's image is a few KiB).
const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The folder of all sources, next to `packages/`.
pub fn root(packages: &Path) -> PathBuf {
    packages.with_file_name("csharp")
}

/// Writes the source into `<root>/<sha256>/worker.cs` (idempotent) and returns the folder.
/// A file whose content no longer matches its name is written again.
pub fn store(root: &Path, bytes: &[u8], info: &PackageInfo) -> Result<PathBuf, CodeStoreError> {
    let io = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CodeStoreError::Io { step, path, source }
    };
    if sha256_hex(bytes) != info.sha256 {
        return Err(CodeStoreError::BadDigest(info.sha256.clone()));
    }
    let dir = root.join(&info.sha256);
    let file = dir.join(SOURCE_FILE);
    if std::fs::read(&file).is_ok_and(|b| sha256_hex(&b) == info.sha256) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    // Hosts may run under another uid: they reach the folder by name and read the files.
    for d in [root, dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(io("set the permissions of", d))?;
    }
    write_atomic(&file, bytes).map_err(io("write", &file))?;
    Ok(dir)
}

/// Copies the compiled images a host left in `<host_tmp>/csharp/` for the source in
/// `source_dir` into that folder; returns how many were copied. Best effort: a failure is
/// logged and only costs a recompile later.
pub fn harvest(host_tmp: &Path, source_dir: &Path) -> usize {
    let Some(sha) = source_dir.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let prefix = format!("{sha}-");
    let Ok(entries) = std::fs::read_dir(host_tmp.join("csharp")) else {
        return 0;
    };
    let mut copied = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(key) = name
            .strip_prefix(&prefix)
            .and_then(|k| k.strip_suffix(".dll"))
        else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let target = source_dir.join(name);
        if target.exists() {
            continue;
        }
        match copy_image(&e.path(), &target) {
            Ok(()) => {
                copied += 1;
                tracing::info!(image = %target.display(), "C# compile cache filled from the host's output");
            }
            Err(err) => {
                tracing::warn!(from = %e.path().display(), "C# compile cache not filled: {err}");
            }
        }
    }
    copied
}

fn copy_image(from: &Path, to: &Path) -> std::io::Result<()> {
    // The host owns the file: open it without following a link it may have planted.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > MAX_IMAGE_BYTES {
        return Err(std::io::Error::other(format!(
            "not a regular file of at most {MAX_IMAGE_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_IMAGE_BYTES + 1), &mut bytes)?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES || !bytes.starts_with(b"MZ") {
        return Err(std::io::Error::other("not a PE image"));
    }
    write_atomic(to, &bytes)
}

use std::os::unix::fs::OpenOptionsExt;

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o444)
        .open(&tmp)?;
    f.write_all(bytes)?;
    // Explicitly: the daemon runs with umask 077, and hosts (another uid) must read it.
    f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A host's compile failure split into the headline and one line per diagnostic
/// (`error CS0103: ... (line 12, col 5)`); `None` if the text is not a compile failure.
pub fn diagnostics(message: &str) -> Option<(String, Vec<String>)> {
    let start = message.find("the C# source does not compile")?;
    let text = &message[start..];
    let mut lines = text.lines();
    let headline = lines.next()?.trim_end_matches(':').to_owned();
    let details: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Some((headline, details))
}

/// Why the C# source engine cannot run next to this host-runner: Roslyn missing.
pub fn roslyn_unavailable(host_runner: &Path) -> Option<String> {
    let dir = host_runner
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("dotnet");
    let roslyn = dir.join("Microsoft.CodeAnalysis.CSharp.dll");
    if roslyn.is_file() {
        return None;
    }
    Some(format!(
        "Roslyn is missing at {} (run host-runner/dotnet/build.sh {}; it copies Microsoft.CodeAnalysis*.dll from the .NET SDK scripts/install-deps.sh unpacks)",
        roslyn.display(),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_are_split_per_line() {
        let msg = "worker x failed to load: the C# source does not compile (2 errors):\nerror CS0103: The name 'y' does not exist in the current context (line 3, col 9)\nerror CS1002: ; expected (line 4, col 1)";
        let (head, details) = diagnostics(msg).unwrap();
        assert_eq!(head, "the C# source does not compile (2 errors)");
        assert_eq!(details.len(), 2);
        assert!(details[0].starts_with("error CS0103"));
        assert!(details[1].ends_with("(line 4, col 1)"));
        assert!(diagnostics("No IWorker implementation found").is_none());
    }

    #[test]
    fn harvest_takes_only_images_of_this_source() {
        let t = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let src = t.path().join("csharp").join(&sha);
        std::fs::create_dir_all(&src).unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(host.join("csharp")).unwrap();
        let mine = format!("{sha}-0123456789abcdef.dll");
        std::fs::write(host.join("csharp").join(&mine), b"MZ image").unwrap();
        std::fs::write(
            host.join("csharp")
                .join(format!("{}-0123456789abcdef.dll", "cd".repeat(32))),
            b"MZ other",
        )
        .unwrap();
        std::fs::write(
            host.join("csharp")
                .join(format!("{sha}-fedcba9876543210.dll")),
            b"not PE",
        )
        .unwrap();
        assert_eq!(harvest(&host, &src), 1);
        assert_eq!(std::fs::read(src.join(&mine)).unwrap(), b"MZ image");
        assert_eq!(std::fs::read_dir(&src).unwrap().count(), 1);
        // Idempotent.
        assert_eq!(harvest(&host, &src), 0);
    }
}
