//! `application/x-python` code: a wheel (`.whl`, a zip) with `worker.py` at its root and one
//! `<name>-<version>.dist-info/METADATA`, whose `Requires-Dist` lines the supervisor installs
//! (never a sandboxed host) into [`deps_dir`] next to the extracted wheel.
//!
//! The zip walk is the nupkg one (`nupkg::scan`: names, links, sizes counted while
//! decompressing, ratios, duplicates, encryption), so a wheel is held to the same rules as a
//! `.nupkg`. Everything in the wheel is extracted: `worker.py`, the modules it vendors, the
//! dist-info.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{EngineKind, Limits, PackageError, PackageInfo, Problem, nupkg, sha256_hex};

/// The worker's module at the wheel's root.
pub const WORKER_FILE: &str = "worker.py";

/// Largest METADATA read (bytes).
const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Where the supervisor installs a wheel's dependencies: `<package dir>.pydeps`, a sibling of
/// the extracted folder (same sha256), which the python engine puts on `sys.path` when it
/// exists. The one definition both sides use.
pub fn deps_dir(package_dir: &Path) -> PathBuf {
    let mut s = package_dir.as_os_str().to_owned();
    s.push(".pydeps");
    PathBuf::from(s)
}

/// What METADATA says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelMetadata {
    pub name: String,
    pub version: String,
    /// `Requires-Dist` values as written (a requirement and its markers).
    pub requires_dist: Vec<String>,
}

/// Validates a wheel as an `application/x-python` worker.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<PackageInfo, PackageError> {
    let size = bytes.len() as u64;
    if size > limits.max_package_bytes {
        return Err(PackageError::Invalid {
            problems: vec![Problem::PackageTooLarge {
                size,
                limit: limits.max_package_bytes,
            }],
        });
    }
    let scan = nupkg::scan(bytes, limits).map_err(|problems| PackageError::Invalid { problems })?;
    let mut problems = scan.problems.clone();
    let files: Vec<&str> = scan
        .entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path.as_str())
        .collect();
    if !files.contains(&WORKER_FILE) {
        problems.push(Problem::PythonSource(format!(
            "the wheel has no {WORKER_FILE} at its root; put the module with `def Process(event)` \
             there"
        )));
    }
    let meta = match metadata(bytes, limits, &files) {
        Ok(m) => Some(m),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    match meta {
        Some(meta) if problems.is_empty() => Ok(PackageInfo {
            id: meta.name,
            version: meta.version,
            abi_version: 1,
            library: "worker".into(),
            entry_point: "Process".into(),
            free_result: String::new(),
            engine: EngineKind::PythonWheel,
            library_path: WORKER_FILE.into(),
            rid: None,
            tfm: None,
            sha256: sha256_hex(bytes),
            warnings: Vec::new(),
            size,
        }),
        _ => Err(PackageError::Invalid { problems }),
    }
}

/// The wheel's METADATA (for the supervisor's dependency install).
pub fn read_metadata(bytes: &[u8], limits: &Limits) -> Result<WheelMetadata, PackageError> {
    let scan = nupkg::scan(bytes, limits).map_err(|problems| PackageError::Invalid { problems })?;
    let files: Vec<&str> = scan
        .entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path.as_str())
        .collect();
    metadata(bytes, limits, &files).map_err(|p| PackageError::Invalid { problems: vec![p] })
}

fn metadata(bytes: &[u8], limits: &Limits, files: &[&str]) -> Result<WheelMetadata, Problem> {
    let candidates: Vec<&&str> = files
        .iter()
        .filter(|f| {
            f.split_once('/')
                .is_some_and(|(dir, rest)| dir.ends_with(".dist-info") && rest == "METADATA")
        })
        .collect();
    let path = match candidates.as_slice() {
        [one] => **one,
        [] => {
            return Err(Problem::PythonSource(
                "the wheel has no <name>-<version>.dist-info/METADATA at its root".into(),
            ));
        }
        many => {
            return Err(Problem::PythonSource(format!(
                "the wheel has {} dist-info/METADATA files; a wheel has exactly one",
                many.len()
            )));
        }
    };
    let mut archive = nupkg::open(bytes, limits).map_err(|p| {
        p.into_iter().next().unwrap_or(Problem::CorruptEntry {
            name: path.to_string(),
            reason: "the archive cannot be opened".into(),
        })
    })?;
    let entry = archive.by_name(path).map_err(|e| Problem::CorruptEntry {
        name: path.to_string(),
        reason: e.to_string(),
    })?;
    let mut text = String::new();
    entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Problem::CorruptEntry {
            name: path.to_string(),
            reason: format!("not UTF-8 text: {e}"),
        })?;
    if text.len() as u64 > MAX_METADATA_BYTES {
        return Err(Problem::PythonSource(format!(
            "{path} is over {MAX_METADATA_BYTES} bytes"
        )));
    }
    parse_metadata(&text).map_err(|why| Problem::PythonSource(format!("{path}: {why}")))
}

/// Dependency wheels vendored in the wheel: every `*.whl` entry (anywhere in it), as (file
/// name, bytes). The supervisor offers them to pip before any index, so a project vendored
/// this way needs neither the index nor `PYTHON_ALLOWED_PACKAGES`. Sizes are bounded by the
/// zip walk's limits, which the whole wheel passed first.
pub fn vendored_wheels(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<(String, Vec<u8>)>, PackageError> {
    let invalid = |p: Problem| PackageError::Invalid { problems: vec![p] };
    let scan = nupkg::scan(bytes, limits).map_err(|problems| PackageError::Invalid { problems })?;
    let paths: Vec<&str> = scan
        .entries
        .iter()
        .filter(|e| !e.is_dir && e.path.ends_with(".whl"))
        .map(|e| e.path.as_str())
        .collect();
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut archive =
        nupkg::open(bytes, limits).map_err(|p| PackageError::Invalid { problems: p })?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for path in paths {
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        if !valid_wheel_file_name(&name) {
            return Err(invalid(Problem::PythonSource(format!(
                "{path}: a vendored wheel needs a wheel file name \
                 (<name>-<version>-<python>-<abi>-<platform>.whl)"
            ))));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(invalid(Problem::PythonSource(format!(
                "{path}: two vendored wheels are named {name}"
            ))));
        }
        let entry = archive.by_name(path).map_err(|e| {
            invalid(Problem::CorruptEntry {
                name: path.to_string(),
                reason: e.to_string(),
            })
        })?;
        let mut data = Vec::new();
        entry
            .take(limits.max_entry_bytes)
            .read_to_end(&mut data)
            .map_err(|e| {
                invalid(Problem::CorruptEntry {
                    name: path.to_string(),
                    reason: e.to_string(),
                })
            })?;
        out.push((name, data));
    }
    Ok(out)
}

/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`, in the characters wheel names
/// use (so the name is also safe as a file name).
fn valid_wheel_file_name(n: &str) -> bool {
    let Some(stem) = n.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    (5..=6).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '!'))
        })
        && !stem.starts_with('.')
}

/// The project name of a wheel file name (`tiny_dep-1.0-py3-none-any.whl` -> `tiny_dep`).
pub fn wheel_file_project(file_name: &str) -> Option<&str> {
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    base.strip_suffix(".whl")?.split('-').next()
}

/// The header part of a METADATA file (email-style `Key: value` lines up to a blank line).
pub fn parse_metadata(text: &str) -> Result<WheelMetadata, String> {
    let (mut name, mut version, mut requires) = (None, None, Vec::new());
    for line in text.lines() {
        if line.is_empty() {
            break; // the description body follows
        }
        let Some((key, value)) = line.split_once(':') else {
            continue; // a continuation line
        };
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(value.to_string()),
            "version" => version = Some(value.to_string()),
            "requires-dist" => requires.push(value.to_string()),
            _ => {}
        }
    }
    let name = name.ok_or("no Name: line")?;
    if !valid_project_name(&name) {
        return Err(format!(
            "Name {name:?} is not a valid project name (letters, digits, '.', '-', '_')"
        ));
    }
    let version = version.ok_or("no Version: line")?;
    for r in &requires {
        let project = requirement_name(r);
        if !valid_project_name(project) {
            return Err(format!(
                "Requires-Dist {r:?} does not start with a valid project name"
            ));
        }
        // A direct reference (`pkg @ https://...`) would fetch from anywhere: refused.
        if r.contains(" @ ") || r.contains("@http") || r.contains("@file") {
            return Err(format!(
                "Requires-Dist {r:?} is a direct URL reference; name a package from the index"
            ));
        }
    }
    Ok(WheelMetadata {
        name,
        version,
        requires_dist: requires,
    })
}

/// The project name a requirement starts with (`requests[socks]>=2; python_version>'3'` ->
/// `requests`).
pub fn requirement_name(req: &str) -> &str {
    let end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'))
        .unwrap_or(req.len());
    &req[..end]
}

/// PEP 508 names: ASCII letters and digits, with `.`, `-`, `_` inside.
fn valid_project_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 200
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// PEP 503 normalisation (`Foo_Bar.baz` -> `foo-bar-baz`), to compare names.
pub fn normalize_name(n: &str) -> String {
    let mut out = String::with_capacity(n.len());
    let mut sep = false;
    for c in n.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_headers_and_requirements() {
        let m = parse_metadata(
            "Metadata-Version: 2.1\nName: my_worker\nVersion: 1.0\nRequires-Dist: Tiny_Dep (>=1.0)\n\
             Requires-Dist: other[x]>=2; python_version > \"3\"\n\nRequires-Dist: in the body\n",
        )
        .expect("parses");
        assert_eq!(m.name, "my_worker");
        assert_eq!(m.requires_dist.len(), 2);
        assert_eq!(requirement_name(&m.requires_dist[0]), "Tiny_Dep");
        assert_eq!(requirement_name(&m.requires_dist[1]), "other");
        assert_eq!(normalize_name("Tiny_Dep.x"), "tiny-dep-x");
        assert!(parse_metadata("Version: 1\n").is_err());
        assert!(
            parse_metadata("Name: a\nVersion: 1\nRequires-Dist: x @ https://e/x.whl\n").is_err()
        );
        assert!(parse_metadata("Name: ../evil\nVersion: 1\n").is_err());
    }

    #[test]
    fn wheel_file_names() {
        assert!(valid_wheel_file_name("tiny_dep-1.0-py3-none-any.whl"));
        assert!(valid_wheel_file_name(
            "a-1.0-1-cp311-cp311-manylinux_2_17_x86_64.whl"
        ));
        assert!(!valid_wheel_file_name("tiny.whl"));
        assert!(!valid_wheel_file_name("../x-1-py3-none-any.whl"));
        assert!(!valid_wheel_file_name("a-1.0-py3-none-any.tar.gz"));
        assert_eq!(
            wheel_file_project("wheels/tiny_dep-1.0-py3-none-any.whl"),
            Some("tiny_dep")
        );
    }

    #[test]
    fn deps_dir_is_a_sibling() {
        assert_eq!(
            deps_dir(Path::new("/d/packages/abc")),
            PathBuf::from("/d/packages/abc.pydeps")
        );
    }
}
