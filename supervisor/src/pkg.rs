//! Interim package check used until `wm_shared::package` (branch `package`) is merged.
//!
//! It mirrors that module's API (`EngineKind::from_mime`, `inspect`, `extract`,
//! `PackageInfo`, `PackageError` with every problem listed) so the swap is a change of `use`
//! lines, and it does the checks the control plane cannot do without: the archive is a zip,
//! entry names are safe (no absolute paths, no `..`, no duplicates, no symlinks), entry count and
//! sizes are bounded, there is one `.nuspec` at the root with an `<id>` and a `<version>`, and
//! the library the engine needs is there (`runtimes/<rid>/native/lib<library>.so` for native,
//! `lib/<tfm>/<library>.dll` for .NET). The full nuspec rules (ABI version range, TFM choice)
//! belong to the shared module.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// The engines a worker can run on, selected by MIME type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EngineKind {
    /// `application/x-native-dll`: a C ABI shared library.
    Native,
    /// `application/x-dotnet-dll`: a .NET assembly implementing `IWorker`.
    DotNet,
}

impl EngineKind {
    /// Every engine, in the order `/v1/engines` lists them.
    pub const ALL: [EngineKind; 2] = [EngineKind::Native, EngineKind::DotNet];

    /// The engine for a MIME type, if there is one.
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.trim() {
            "application/x-native-dll" => Some(EngineKind::Native),
            "application/x-dotnet-dll" => Some(EngineKind::DotNet),
            _ => None,
        }
    }

    /// The MIME type that selects this engine.
    pub fn mime(self) -> &'static str {
        match self {
            EngineKind::Native => "application/x-native-dll",
            EngineKind::DotNet => "application/x-dotnet-dll",
        }
    }

    /// The language name the API shows.
    pub fn language(self) -> &'static str {
        match self {
            EngineKind::Native => "Native",
            EngineKind::DotNet => "C#",
        }
    }
}

/// Bounds on what a package may contain.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries an archive may have.
    pub max_entries: usize,
    /// Most bytes all entries may take once uncompressed.
    pub max_total_uncompressed: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 4096,
            max_total_uncompressed: 512 << 20,
        }
    }
}

/// What validation found in a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// The nuspec `<id>`.
    pub id: String,
    /// The nuspec `<version>`.
    pub version: String,
    /// The library basename (`virtufinLibrary`, else the id).
    pub library: String,
    /// Path of the library file inside the package (`/`-separated).
    pub library_path: String,
    /// `virtufinEntryPoint` (default `Process`).
    pub entry_point: String,
    /// `virtufinFreeResult` (default `FreeResult`).
    pub free_result: String,
    /// `virtufinAbiVersion` (default 1).
    pub abi_version: u32,
}

/// Everything wrong with a package, all at once.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid package: {}", problems.join("; "))]
pub struct PackageError {
    /// One entry per problem found.
    pub problems: Vec<String>,
}

impl PackageError {
    fn one(p: impl Into<String>) -> Self {
        PackageError {
            problems: vec![p.into()],
        }
    }
}

/// The runtime identifier of this machine for native packages.
pub fn current_rid() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "linux-arm64"
    } else {
        "linux-x64"
    }
}

/// Checks an entry name: relative, no `..`, no empty components.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Reads the text of `<tag>...</tag>` (first occurrence) from a nuspec.
fn tag_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(xml[start..end].trim())
}

/// Validates `bytes` as a package for `engine` and reports every problem found.
pub fn inspect(
    bytes: &[u8],
    engine: EngineKind,
    limits: &Limits,
) -> Result<PackageInfo, PackageError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        PackageError::one(format!("the package is not a zip archive (.nupkg): {e}"))
    })?;
    let mut problems = Vec::new();
    if archive.len() > limits.max_entries {
        return Err(PackageError::one(format!(
            "the package has {} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    let mut nuspec_names = Vec::new();
    for i in 0..archive.len() {
        let entry = match archive.by_index_raw(i) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("entry {i} cannot be read: {e}"));
                continue;
            }
        };
        let name = match entry.name() {
            Ok(n) => n.into_owned(),
            Err(e) => {
                problems.push(format!("entry {i} has an unreadable name: {e}"));
                continue;
            }
        };
        if entry.is_symlink() {
            problems.push(format!(
                "entry '{name}' is a symbolic link; packages may not contain links"
            ));
        }
        if !safe_name(name.trim_end_matches('/')) {
            problems.push(format!(
                "entry '{name}' has an unsafe path (absolute, '..' or empty parts)"
            ));
        }
        if !seen.insert(name.clone()) {
            problems.push(format!("entry '{name}' appears twice"));
        }
        total = total.saturating_add(entry.size());
        if !name.contains('/') && name.ends_with(".nuspec") {
            nuspec_names.push(name.clone());
        }
        names.push(name);
    }
    if total > limits.max_total_uncompressed {
        problems.push(format!(
            "the package unpacks to {total} bytes, more than the limit of {}",
            limits.max_total_uncompressed
        ));
    }
    let mut nuspec = String::new();
    match nuspec_names.as_slice() {
        [] => problems.push("no .nuspec file at the package root".to_owned()),
        [one] => match archive.by_name(one) {
            Ok(f) => {
                if let Err(e) = f.take(1 << 20).read_to_string(&mut nuspec) {
                    problems.push(format!("'{one}' is not readable UTF-8 text: {e}"));
                }
            }
            Err(e) => problems.push(format!("'{one}' cannot be read: {e}")),
        },
        many => problems.push(format!(
            "more than one .nuspec at the root: {}",
            many.join(", ")
        )),
    }
    if nuspec.contains("<!DOCTYPE") || nuspec.contains("<!ENTITY") {
        problems
            .push("the nuspec declares a DOCTYPE or entities, which are not allowed".to_owned());
        nuspec.clear();
    }
    let id = tag_text(&nuspec, "id").unwrap_or("").to_owned();
    let version = tag_text(&nuspec, "version").unwrap_or("").to_owned();
    if !nuspec.is_empty() && id.is_empty() {
        problems.push("the nuspec has no <id>".to_owned());
    }
    if !nuspec.is_empty() && version.is_empty() {
        problems.push("the nuspec has no <version>".to_owned());
    }
    let library = tag_text(&nuspec, "virtufinLibrary")
        .map(str::to_owned)
        .unwrap_or_else(|| id.clone());
    let library_ok = !library.is_empty()
        && library.len() <= 128
        && !library.contains("..")
        && library
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !nuspec.is_empty() && !library_ok {
        problems.push(format!(
            "library name '{library}' is invalid: use 1-128 of [A-Za-z0-9_.-] without '..'"
        ));
    }
    let abi_version = match tag_text(&nuspec, "virtufinAbiVersion") {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(1) => 1,
            Ok(n) => {
                problems.push(format!(
                    "virtufinAbiVersion {n} is not supported (supported: 1)"
                ));
                n
            }
            Err(_) => {
                problems.push(format!("virtufinAbiVersion '{v}' is not an integer"));
                0
            }
        },
    };
    let mut library_path = String::new();
    if library_ok {
        match engine {
            EngineKind::Native => {
                let want = format!("runtimes/{}/native/lib{library}.so", current_rid());
                if names.contains(&want) {
                    library_path = want;
                } else {
                    let rids: Vec<&str> = names
                        .iter()
                        .filter_map(|n| n.strip_prefix("runtimes/")?.split('/').next())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    problems.push(format!(
                        "no '{want}' in the package (runtimes present: {})",
                        if rids.is_empty() {
                            "none".to_owned()
                        } else {
                            rids.join(", ")
                        }
                    ));
                }
            }
            EngineKind::DotNet => {
                let file = format!("{library}.dll");
                match names.iter().find(|n| {
                    let parts: Vec<&str> = n.split('/').collect();
                    parts.len() == 3 && parts[0] == "lib" && parts[2] == file
                }) {
                    Some(p) => library_path = p.clone(),
                    None => problems.push(format!("no 'lib/<tfm>/{file}' in the package")),
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(PackageError { problems });
    }
    Ok(PackageInfo {
        entry_point: tag_text(&nuspec, "virtufinEntryPoint")
            .unwrap_or("Process")
            .to_owned(),
        free_result: tag_text(&nuspec, "virtufinFreeResult")
            .unwrap_or("FreeResult")
            .to_owned(),
        id,
        version,
        library,
        library_path,
        abi_version,
    })
}

/// Unpacks a package that [`inspect`] accepted into `dest` (created; must not exist yet).
pub fn extract(bytes: &[u8], dest: &Path, limits: &Limits) -> Result<(), PackageError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        PackageError::one(format!("cannot {what} '{}': {e}", p.display()))
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        PackageError::one(format!("the package is not a zip archive (.nupkg): {e}"))
    })?;
    std::fs::create_dir_all(dest).map_err(|e| io("create", dest, e))?;
    let mut budget = limits.max_total_uncompressed;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| PackageError::one(format!("entry {i} cannot be read: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| PackageError::one(format!("entry {i} has an unreadable name: {e}")))?
            .into_owned();
        let rel = name.trim_end_matches('/');
        if !safe_name(rel) || entry.is_symlink() {
            return Err(PackageError::one(format!(
                "entry '{name}' has an unsafe path"
            )));
        }
        let path = dest.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| io("create", &path, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        let mut out = std::fs::File::create(&path).map_err(|e| io("create", &path, e))?;
        // The declared size can lie: count what is actually inflated.
        let mut limited = (&mut entry).take(budget.saturating_add(1));
        let n = std::io::copy(&mut limited, &mut out).map_err(|e| io("write", &path, e))?;
        if n > budget {
            return Err(PackageError::one(format!(
                "the package unpacks to more than {} bytes",
                limits.max_total_uncompressed
            )));
        }
        budget -= n;
        out.flush().map_err(|e| io("write", &path, e))?;
    }
    Ok(())
}
