//! A digest of a directory tree, for "nothing here changed" checks (the containment suite).
//!
//! [`digest`] walks a tree without following links and records, per relative path, the entry's
//! kind, permission bits and owner, and for regular files the sha256 of the content (for links,
//! the target). Files the caller marks *volatile* (databases the daemon itself keeps writing)
//! are recorded by kind, mode and owner only. [`diff`] lists what differs between two digests.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Relative path -> description of the entry.
pub type TreeDigest = BTreeMap<PathBuf, String>;

/// Digests the tree under `root`; `volatile(rel)` entries are recorded without their content.
pub fn digest(root: &Path, volatile: &dyn Fn(&Path) -> bool) -> TreeDigest {
    let mut out = TreeDigest::new();
    walk(root, root, volatile, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, volatile: &dyn Fn(&Path) -> bool, out: &mut TreeDigest) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let head = format!(
            "mode={:o} owner={}:{}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        );
        let ft = md.file_type();
        let desc = if ft.is_dir() {
            walk(root, &path, volatile, out);
            format!("dir {head}")
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            format!("link {head} -> {}", target.display())
        } else if ft.is_file() {
            if volatile(&rel) {
                format!("file {head} (content not compared)")
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                format!(
                    "file {head} len={} sha256={}",
                    bytes.len(),
                    hex::encode(Sha256::digest(&bytes))
                )
            }
        } else {
            format!("special {head}")
        };
        out.insert(rel, desc);
    }
}

/// Human-readable differences (`+` added, `-` removed, `~` changed); empty when equal.
pub fn diff(before: &TreeDigest, after: &TreeDigest) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => d.push(format!("- {} ({v})", k.display())),
            Some(w) if w != v => d.push(format!("~ {}: {v} -> {w}", k.display())),
            Some(_) => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            d.push(format!("+ {} ({v})", k.display()));
        }
    }
    d
}
