//! Finding a .NET runtime: where `libhostfxr.so` and `Microsoft.NETCore.App` live.
//!
//! A pure filesystem search, used by the host-runner before it starts CoreCLR and by the
//! supervisor to report whether the .NET engine is available. The candidate roots, in order:
//!
//! 1. `$DOTNET_ROOT`,
//! 2. side by side: `host/fxr/<version>/` next to the binaries (the directory of the running
//!    executable),
//! 3. the system installs [`SYSTEM_DIRS`].
//!
//! A root is usable when it has `host/fxr/<version>/libhostfxr.so` and a
//! `shared/Microsoft.NETCore.App/<version>/` of at least [`MIN_FRAMEWORK`] (the engine bridge
//! targets netcoreapp3.1 with `rollForward: Major`). The usable root with the newest hostfxr
//! wins; on a tie the earlier root in the list above. When none is usable, the error names every
//! path searched and what was missing there.

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

/// System install locations searched after `DOTNET_ROOT` and the side-by-side directory.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr/share/dotnet",
    "/usr/lib/dotnet",
    "/usr/local/dotnet",
    "/opt/dotnet",
];

/// The oldest shared framework the engine bridge runs on.
pub const MIN_FRAMEWORK: DotNetVersion = DotNetVersion {
    major: 3,
    minor: 1,
    patch: 0,
    pre: None,
};

/// The shared framework the bridge needs.
pub const FRAMEWORK_NAME: &str = "Microsoft.NETCore.App";

/// A .NET version directory name: `major.minor.patch[-prerelease]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DotNetVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The pre-release label (`preview.1.2` in `8.0.0-preview.1.2`); a release sorts after it.
    pub pre: Option<String>,
}

impl DotNetVersion {
    /// Parses a version directory name; `None` for anything else (`3.1`, `latest`, `3.1.x`).
    pub fn parse(s: &str) -> Option<DotNetVersion> {
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) if !p.is_empty() => (c, Some(p.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let mut it = core.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let major = num(it.next())?;
        let minor = num(it.next())?;
        let patch = num(it.next())?;
        if it.next().is_some() {
            return None;
        }
        Some(DotNetVersion {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl Ord for DotNetVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => cmp_prerelease(a, b),
            })
    }
}

impl PartialOrd for DotNetVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// SemVer pre-release order: dot-separated identifiers, numeric ones compared as numbers and
/// sorting before alphanumeric ones; a shorter list of equal identifiers sorts first.
fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

impl fmt::Display for DotNetVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(p) = &self.pre {
            write!(f, "-{p}")?;
        }
        Ok(())
    }
}

/// Why a root was considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeSource {
    /// `$DOTNET_ROOT`.
    DotNetRoot,
    /// `host/fxr/<version>/` next to the binaries.
    SideBySide,
    /// One of [`SYSTEM_DIRS`].
    System,
}

impl fmt::Display for RuntimeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeSource::DotNetRoot => "DOTNET_ROOT",
            RuntimeSource::SideBySide => "side-by-side",
            RuntimeSource::System => "system install",
        })
    }
}

/// A usable runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotNetRuntime {
    /// The installation root (`dotnet_root` for hostfxr).
    pub root: PathBuf,
    /// `<root>/host/fxr/<version>/libhostfxr.so`.
    pub hostfxr: PathBuf,
    /// The hostfxr version (its directory name).
    pub hostfxr_version: DotNetVersion,
    /// Installed `Microsoft.NETCore.App` versions of at least [`MIN_FRAMEWORK`], oldest first.
    pub frameworks: Vec<DotNetVersion>,
    /// How the root was found.
    pub source: RuntimeSource,
}

impl DotNetRuntime {
    /// The newest installed shared framework.
    pub fn newest_framework(&self) -> Option<&DotNetVersion> {
        self.frameworks.last()
    }

    /// The framework hostfxr will run the engine bridge on, and so the one worker assemblies
    /// must target: the bridge asks for [`MIN_FRAMEWORK`] with `rollForward: Major`, which takes
    /// the latest patch of 3.1 when present, else the lowest higher major (then its lowest
    /// minor, latest patch). Pre-releases count only when no release qualifies. This is not
    /// necessarily [`DotNetRuntime::newest_framework`]: with 3.1 and 8.0 installed the bridge
    /// runs on 3.1, so a package's `lib/net8.0/` would not load; the package validator should
    /// pick the TFM for this framework's major.
    pub fn bridge_framework(&self) -> Option<&DotNetVersion> {
        let pick = |releases_only: bool| -> Option<&DotNetVersion> {
            let ok = |v: &&DotNetVersion| v.pre.is_none() || !releases_only;
            // Same major and minor as requested: latest patch.
            let same = self
                .frameworks
                .iter()
                .filter(ok)
                .filter(|v| v.major == MIN_FRAMEWORK.major && v.minor == MIN_FRAMEWORK.minor)
                .max();
            if same.is_some() {
                return same;
            }
            // Lowest higher minor of the same major, else lowest higher major; lowest minor,
            // then latest patch.
            let (major, minor) = self
                .frameworks
                .iter()
                .filter(ok)
                .filter(|v| **v > MIN_FRAMEWORK)
                .map(|v| (v.major, v.minor))
                .min()?;
            self.frameworks
                .iter()
                .filter(ok)
                .filter(|v| v.major == major && v.minor == minor)
                .max()
        };
        pick(true).or_else(|| pick(false))
    }
}

/// One root looked at, and why it was not usable (empty when it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchedRoot {
    pub path: PathBuf,
    pub source: RuntimeSource,
    pub problem: String,
}

/// Errors of [`RuntimeSearch::find`].
#[derive(Debug, thiserror::Error)]
pub enum DotNetDiscoveryError {
    /// No candidate root had a hostfxr and a shared framework.
    #[error(
        "no usable .NET runtime (>= {MIN_FRAMEWORK}) found; install one or set DOTNET_ROOT to a directory \
         with host/fxr/<version>/libhostfxr.so and shared/{FRAMEWORK_NAME}/<version>/. searched: {}",
        describe(.searched)
    )]
    NotFound { searched: Vec<SearchedRoot> },
}

fn describe(searched: &[SearchedRoot]) -> String {
    searched
        .iter()
        .map(|s| format!("{} ({}): {}", s.path.display(), s.source, s.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where to look. [`RuntimeSearch::from_env`] fills it from the process; tests build their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSearch {
    /// `$DOTNET_ROOT`, if set and non-empty.
    pub dotnet_root: Option<PathBuf>,
    /// The directory of the running binary (side-by-side installs).
    pub exe_dir: Option<PathBuf>,
    /// System install locations ([`SYSTEM_DIRS`] by default).
    pub system_dirs: Vec<PathBuf>,
}

impl RuntimeSearch {
    /// `DOTNET_ROOT`, the current executable's directory and [`SYSTEM_DIRS`].
    pub fn from_env() -> RuntimeSearch {
        RuntimeSearch {
            dotnet_root: std::env::var_os("DOTNET_ROOT")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            exe_dir: std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
            system_dirs: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The roots in search order.
    pub fn candidates(&self) -> Vec<(PathBuf, RuntimeSource)> {
        let mut out = Vec::new();
        if let Some(r) = &self.dotnet_root {
            out.push((r.clone(), RuntimeSource::DotNetRoot));
        }
        if let Some(d) = &self.exe_dir {
            out.push((d.clone(), RuntimeSource::SideBySide));
        }
        for d in &self.system_dirs {
            out.push((d.clone(), RuntimeSource::System));
        }
        out
    }

    /// The usable root with the newest hostfxr, or every root searched and what was missing.
    pub fn find(&self) -> Result<DotNetRuntime, DotNetDiscoveryError> {
        let mut best: Option<DotNetRuntime> = None;
        let mut searched = Vec::new();
        for (root, source) in self.candidates() {
            match probe(&root, source) {
                Ok(rt) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| rt.hostfxr_version > b.hostfxr_version)
                    {
                        best = Some(rt);
                    }
                }
                Err(problem) => searched.push(SearchedRoot {
                    path: root,
                    source,
                    problem,
                }),
            }
        }
        best.ok_or(DotNetDiscoveryError::NotFound { searched })
    }
}

/// Looks at one root: the newest `host/fxr/<v>/libhostfxr.so` and the frameworks >= 3.1.
fn probe(root: &Path, source: RuntimeSource) -> Result<DotNetRuntime, String> {
    if !root.is_dir() {
        return Err("no such directory".to_string());
    }
    let fxr_dir = root.join("host").join("fxr");
    let hostfxr = versions_in(&fxr_dir)
        .into_iter()
        .rev()
        .map(|v| {
            let lib = fxr_dir.join(v.to_string()).join("libhostfxr.so");
            (v, lib)
        })
        .find(|(_, lib)| lib.is_file());
    let Some((hostfxr_version, hostfxr)) = hostfxr else {
        return Err(format!("no {}/<version>/libhostfxr.so", fxr_dir.display()));
    };
    let fw_dir = root.join("shared").join(FRAMEWORK_NAME);
    let frameworks: Vec<DotNetVersion> = versions_in(&fw_dir)
        .into_iter()
        .filter(|v| *v >= MIN_FRAMEWORK)
        .collect();
    if frameworks.is_empty() {
        return Err(format!(
            "no {}/<version>/ of {MIN_FRAMEWORK} or newer",
            fw_dir.display()
        ));
    }
    Ok(DotNetRuntime {
        root: root.to_path_buf(),
        hostfxr,
        hostfxr_version,
        frameworks,
        source,
    })
}

/// Version-named subdirectories of `dir`, oldest first (unreadable or missing: none).
fn versions_in(dir: &Path) -> Vec<DotNetVersion> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<DotNetVersion> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || t.is_symlink()))
        .filter_map(|e| e.file_name().to_str().and_then(DotNetVersion::parse))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(root: &Path, fxr: &[&str], frameworks: &[&str]) {
        for v in fxr {
            let d = root.join("host/fxr").join(v);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("libhostfxr.so"), b"").unwrap();
        }
        for v in frameworks {
            std::fs::create_dir_all(root.join("shared/Microsoft.NETCore.App").join(v)).unwrap();
        }
    }

    fn search(
        dotnet_root: Option<&Path>,
        exe_dir: Option<&Path>,
        system: &[&Path],
    ) -> RuntimeSearch {
        RuntimeSearch {
            dotnet_root: dotnet_root.map(Path::to_path_buf),
            exe_dir: exe_dir.map(Path::to_path_buf),
            system_dirs: system.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    #[test]
    fn versions_parse_and_order_numerically() {
        let v = |s| DotNetVersion::parse(s).unwrap();
        assert!(v("10.0.0") > v("9.0.12"));
        assert!(v("3.1.10") > v("3.1.2"));
        assert!(v("8.0.0") > v("8.0.0-rc.2.23479.6"));
        assert!(v("8.0.0-rc.2") > v("8.0.0-preview.7"));
        assert!(v("8.0.0-preview.10") > v("8.0.0-preview.9"));
        assert_eq!(v("8.0.0-rc.2").to_string(), "8.0.0-rc.2");
        for bad in ["3.1", "latest", "3.1.x", "3.1.2.4", "-1.0.0", "3.1.2-", ""] {
            assert_eq!(DotNetVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn newest_usable_hostfxr_wins_across_roots() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        let c = t.path().join("c");
        install(&a, &["3.1.2"], &["3.1.2"]);
        install(&b, &["8.0.1", "10.0.0"], &["8.0.1", "10.0.0"]);
        // Newest hostfxr of all, but no shared framework: not usable.
        install(&c, &["11.0.0"], &[]);
        let rt = search(Some(&a), Some(&c), &[&b]).find().unwrap();
        assert_eq!(rt.root, b);
        assert_eq!(rt.hostfxr_version.to_string(), "10.0.0");
        assert_eq!(rt.hostfxr, b.join("host/fxr/10.0.0/libhostfxr.so"));
        assert_eq!(rt.source, RuntimeSource::System);
        assert_eq!(rt.newest_framework().unwrap().to_string(), "10.0.0");
    }

    #[test]
    fn the_bridge_runs_on_the_framework_roll_forward_picks() {
        let t = tempfile::tempdir().unwrap();
        let rt = |fws: &[&str]| {
            let root = t.path().join(fws.join("_"));
            install(&root, &["10.0.0"], fws);
            search(Some(&root), None, &[]).find().unwrap()
        };
        let v = |r: &DotNetRuntime| r.bridge_framework().map(ToString::to_string);
        // 3.1 present: its latest patch, even with newer majors installed.
        assert_eq!(
            v(&rt(&["3.1.2", "3.1.10", "8.0.1", "10.0.0"])).as_deref(),
            Some("3.1.10")
        );
        // No 3.1: the lowest higher major, its lowest minor, latest patch.
        assert_eq!(
            v(&rt(&["8.0.1", "8.0.11", "8.1.0", "10.0.0"])).as_deref(),
            Some("8.0.11")
        );
        // Pre-releases only when nothing else qualifies.
        assert_eq!(v(&rt(&["9.0.0-rc.1", "10.0.0"])).as_deref(), Some("10.0.0"));
        assert_eq!(
            v(&rt(&["11.0.0-preview.2"])).as_deref(),
            Some("11.0.0-preview.2")
        );
    }

    #[test]
    fn tie_goes_to_dotnet_root_and_old_frameworks_are_ignored() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        install(&a, &["3.1.2"], &["2.2.0", "3.1.2"]);
        install(&b, &["3.1.2"], &["3.1.2"]);
        let rt = search(Some(&a), None, &[&b]).find().unwrap();
        assert_eq!(rt.root, a);
        assert_eq!(rt.source, RuntimeSource::DotNetRoot);
        assert_eq!(rt.frameworks.len(), 1);
    }

    #[test]
    fn side_by_side_install_next_to_the_binary_is_found() {
        let t = tempfile::tempdir().unwrap();
        install(t.path(), &["8.0.0"], &["8.0.0"]);
        let rt = search(None, Some(t.path()), &[]).find().unwrap();
        assert_eq!(rt.source, RuntimeSource::SideBySide);
    }

    #[test]
    fn nothing_usable_names_every_path_searched() {
        let t = tempfile::tempdir().unwrap();
        let only_fxr = t.path().join("only-fxr");
        let old_fw = t.path().join("old");
        let missing = t.path().join("missing");
        install(&only_fxr, &["3.1.2"], &[]);
        install(&old_fw, &["2.1.0"], &["2.1.0"]);
        // A version directory without the library does not count.
        std::fs::create_dir_all(t.path().join("empty/host/fxr/9.0.0")).unwrap();
        let empty = t.path().join("empty");
        let err = search(Some(&missing), Some(&only_fxr), &[&old_fw, &empty])
            .find()
            .unwrap_err();
        let DotNetDiscoveryError::NotFound { searched } = &err;
        assert_eq!(searched.len(), 4);
        let msg = err.to_string();
        for p in [&missing, &only_fxr, &old_fw, &empty] {
            assert!(msg.contains(&p.display().to_string()), "{msg}");
        }
        assert!(msg.contains("no such directory"), "{msg}");
        assert!(msg.contains("DOTNET_ROOT"), "{msg}");
        assert!(msg.contains("libhostfxr.so"), "{msg}");
        assert!(msg.contains("3.1.0 or newer"), "{msg}");
    }

    #[test]
    fn the_repository_runtime_is_usable_when_installed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/dotnet");
        if !root.join("host/fxr").is_dir() {
            // scripts/install-deps.sh was not run; the other tests cover the search itself.
            return;
        }
        let rt = search(Some(&root), None, &[]).find().unwrap();
        assert!(rt.hostfxr.is_file());
        assert!(rt.hostfxr_version >= MIN_FRAMEWORK);
    }
}
