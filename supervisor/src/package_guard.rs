//! Extracted packages are immutable to hosts: read-only on disk, and checked before reuse.
//!
//! After `packages/<sha256>/` is extracted, its tree is made read-only (directories 0555,
//! files 0444; owned by the daemon, so a host running under `HOST_UID` cannot change it even
//! without Landlock) and a manifest of every entry (path, kind, size, sha256) is written to
//! `packages/.<sha256>.manifest` (0600: hosts cannot read or forge it). Before the folder is
//! handed to a host again (start, reload, recovery) it is compared with the manifest; a folder
//! that differs in any way (a changed, added or removed file, a link) is moved aside and
//! extracted again from the code blob, never loaded.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where the manifest of `packages/<sha>/` lives.
pub fn manifest_path(package_dir: &Path) -> PathBuf {
    let name = package_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    package_dir.with_file_name(format!(".{name}.manifest"))
}

/// One line per entry, sorted: `d <path>`, or `f <path> <size> <sha256>`; anything else
/// (a symlink, a FIFO) is an error, since extraction never creates one.
pub fn manifest(dir: &Path) -> io::Result<String> {
    let mut lines = Vec::new();
    walk(dir, Path::new(""), &mut lines)?;
    lines.sort();
    let mut out = String::new();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    Ok(out)
}

fn walk(root: &Path, rel: &Path, lines: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&rel_path))?;
        let shown = rel_path.to_string_lossy().into_owned();
        if meta.is_dir() {
            lines.push(format!("d {shown}"));
            walk(root, &rel_path, lines)?;
        } else if meta.is_file() {
            let bytes = fs::read(root.join(&rel_path))?;
            let digest = hex::encode(Sha256::digest(&bytes));
            lines.push(format!("f {shown} {} {digest}", bytes.len()));
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{shown} is neither a file nor a directory"),
            ));
        }
    }
    Ok(())
}

/// Makes the tree read-only: directories 0555, files 0444.
pub fn make_read_only(dir: &Path) -> io::Result<()> {
    set_modes(dir, 0o555, 0o444)
}

/// Makes the tree writable by its owner again, so it can be removed by a non-root daemon.
pub fn make_removable(dir: &Path) -> io::Result<()> {
    set_modes(dir, 0o755, 0o644)
}

fn set_modes(dir: &Path, dir_mode: u32, file_mode: u32) -> io::Result<()> {
    // Parents before children going down (to be able to enter), so set the directory first
    // when loosening and last when tightening.
    let tightening = dir_mode & 0o200 == 0;
    if !tightening {
        fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            set_modes(&entry.path(), dir_mode, file_mode)?;
        } else if meta.is_file() {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(file_mode))?;
        }
    }
    if tightening {
        fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))?;
    }
    Ok(())
}

/// What the check of an existing folder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Same as at extraction.
    Intact,
    /// No folder yet.
    Missing,
    /// Differs from its manifest (or has none): must be extracted again.
    Tampered(String),
}

/// Compares `dir` with its manifest.
pub fn check(dir: &Path) -> Check {
    if !dir.exists() {
        return Check::Missing;
    }
    let Ok(expected) = fs::read_to_string(manifest_path(dir)) else {
        return Check::Tampered("it has no manifest".into());
    };
    match manifest(dir) {
        Ok(actual) if actual == expected => Check::Intact,
        Ok(actual) => {
            let first = actual
                .lines()
                .zip(expected.lines())
                .find(|(a, e)| a != e)
                .map(|(a, e)| format!("found '{a}', expected '{e}'"))
                .unwrap_or_else(|| "a file was added or removed".into());
            Check::Tampered(first)
        }
        Err(e) => Check::Tampered(e.to_string()),
    }
}

/// Seals a freshly extracted folder: read-only tree, then its manifest (0600).
pub fn seal(dir: &Path) -> io::Result<()> {
    make_read_only(dir)?;
    let text = manifest(dir)?;
    let path = manifest_path(dir);
    let tmp = path.with_extension("manifest.tmp");
    fs::write(&tmp, text)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, &path)
}

/// Moves a tampered folder out of the way (renamed first, so no host is handed it again,
/// then removed) and forgets its manifest.
pub fn discard(dir: &Path) -> io::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.with_file_name(format!(
        ".tmp-tampered-{name}-{}",
        std::process::id() as u64 * 1_000_000 + u64::from(rand_suffix())
    ));
    fs::rename(dir, &aside)?;
    let _ = fs::remove_file(manifest_path(dir));
    let _ = make_removable(&aside);
    fs::remove_dir_all(&aside)
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1_000_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(root: &Path) -> PathBuf {
        let dir = root.join("abc");
        fs::create_dir_all(dir.join("runtimes/linux-x64/native")).unwrap();
        fs::write(dir.join("runtimes/linux-x64/native/libw.so"), b"\x7fELF...").unwrap();
        fs::write(dir.join("w.nuspec"), b"<package/>").unwrap();
        dir
    }

    #[test]
    fn a_sealed_folder_is_read_only_and_checks_intact() {
        let t = tempfile::tempdir().unwrap();
        let dir = package(t.path());
        assert_eq!(check(&dir), Check::Tampered("it has no manifest".into()));
        seal(&dir).unwrap();
        assert_eq!(check(&dir), Check::Intact);
        let mode = fs::metadata(dir.join("w.nuspec"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        let mode = fs::metadata(manifest_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn any_change_is_found_and_the_folder_can_be_discarded() {
        let t = tempfile::tempdir().unwrap();
        let dir = package(t.path());
        seal(&dir).unwrap();
        let lib = dir.join("runtimes/linux-x64/native/libw.so");
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&lib, b"\x7fELF evil").unwrap();
        match check(&dir) {
            Check::Tampered(why) => assert!(why.contains("libw.so"), "{why}"),
            other => panic!("{other:?}"),
        }
        discard(&dir).unwrap();
        assert_eq!(check(&dir), Check::Missing);
        assert!(!manifest_path(&dir).exists());

        let dir = package(t.path());
        seal(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("extra")).unwrap_or_else(|_| {
            // A read-only dir refuses the link for a non-root test run: loosen it first.
            make_removable(&dir).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", dir.join("extra")).unwrap();
        });
        assert!(matches!(check(&dir), Check::Tampered(_)));
    }
}
