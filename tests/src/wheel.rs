//! Builds Python wheels in memory (for `application/x-python` workers and the local package
//! folder their dependencies come from), as `pip wheel` would lay them out: the files, then
//! `<name>-<version>.dist-info/{METADATA,WHEEL,RECORD}` with RECORD's sha256 of each file.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::nupkg::Nupkg;

/// A wheel's bytes: `files` at the root of the archive, then its dist-info.
pub fn build(name: &str, version: &str, requires: &[&str], files: &[(&str, &[u8])]) -> Vec<u8> {
    let dist = format!("{}-{version}.dist-info", name.replace('-', "_"));
    let mut metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
    for r in requires {
        metadata.push_str(&format!("Requires-Dist: {r}\n"));
    }
    let wheel = "Wheel-Version: 1.0\nGenerator: workmanager-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    entries.push((format!("{dist}/METADATA"), metadata.into_bytes()));
    entries.push((format!("{dist}/WHEEL"), wheel.as_bytes().to_vec()));
    let mut record = String::new();
    for (n, b) in &entries {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(b));
        record.push_str(&format!("{n},sha256={hash},{}\n", b.len()));
    }
    record.push_str(&format!("{dist}/RECORD,,\n"));
    entries.push((format!("{dist}/RECORD"), record.into_bytes()));
    entries
        .into_iter()
        .fold(Nupkg::new(), |w, (n, b)| w.file(&n, b))
        .build()
}

/// The file name pip expects for a pure-Python wheel (`name-version-py3-none-any.whl`).
pub fn file_name(name: &str, version: &str) -> String {
    format!("{}-{version}-py3-none-any.whl", name.replace('-', "_"))
}
