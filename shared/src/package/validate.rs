//! The engine layouts: which file in the package is the worker library on this machine.
//!
//! Native: `runtimes/<rid>/native/lib<library>.so` for this machine's RID. .NET:
//! `lib/<tfm>/<library>.dll` in the best `lib/<tfm>/` folder this machine's runtime can run.

use std::collections::BTreeSet;

use super::nupkg::Scan;
use super::{EngineKind, Problem, SUPPORTED_RIDS, Target};

/// Where the library is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub library_path: String,
    pub rid: Option<String>,
    pub tfm: Option<String>,
}

/// Finds the library for `engine`; pushes a problem and returns `None` when it is not there.
pub(crate) fn layout(
    scan: &Scan,
    engine: EngineKind,
    target: &Target,
    library: &str,
    problems: &mut Vec<Problem>,
) -> Option<Layout> {
    let files: Vec<&str> = scan
        .entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path.as_str())
        .collect();
    let found = match engine {
        EngineKind::Native => native(&files, &target.rid, library),
        EngineKind::DotNet => dotnet(&files, target.dotnet_major, library),
    };
    match found {
        Ok(layout) => Some(layout),
        Err(problem) => {
            problems.push(problem);
            None
        }
    }
}

fn native(files: &[&str], rid: &str, library: &str) -> Result<Layout, Problem> {
    if !SUPPORTED_RIDS.contains(&rid) {
        return Err(Problem::UnsupportedRid {
            rid: rid.to_string(),
        });
    }
    let expected = format!("runtimes/{rid}/native/lib{library}.so");
    if files.contains(&expected.as_str()) {
        return Ok(Layout {
            library_path: expected,
            rid: Some(rid.to_string()),
            tfm: None,
        });
    }
    let mut rids = BTreeSet::new();
    let mut present = Vec::new();
    for file in files {
        let parts: Vec<&str> = file.split('/').collect();
        if let ["runtimes", r, "native", rest @ ..] = parts.as_slice() {
            if !rest.is_empty() {
                rids.insert(r.to_string());
                if *r == rid && rest.len() == 1 {
                    present.push(rest[0].to_string());
                }
            }
        }
    }
    Err(Problem::MissingNativeLibrary {
        rid: rid.to_string(),
        expected,
        rids: rids.into_iter().collect(),
        present,
    })
}

/// A target framework moniker we know how to rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Framework {
    /// .NET (Core) before .NET Standard: a folder built for the runtime itself wins.
    pub is_core: bool,
    pub major: u32,
    pub minor: u32,
}

impl Framework {
    /// Parses `netcoreappX.Y`, `netX.Y` (X >= 5) and `netstandard2.0`/`2.1`, case-insensitively.
    /// OS-specific (`net8.0-windows`) and .NET Framework (`net48`) monikers are `None`.
    pub(crate) fn parse(tfm: &str) -> Option<Framework> {
        let tfm = tfm.to_ascii_lowercase();
        let version = |v: &str| -> Option<(u32, u32)> {
            let (a, b) = v.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        if let Some(v) = tfm.strip_prefix("netcoreapp") {
            let (major, minor) = version(v)?;
            (1..=3).contains(&major).then_some(Framework {
                is_core: true,
                major,
                minor,
            })
        } else if let Some(v) = tfm.strip_prefix("netstandard") {
            let (major, minor) = version(v)?;
            (major == 2 && minor <= 1).then_some(Framework {
                is_core: false,
                major,
                minor,
            })
        } else if let Some(v) = tfm.strip_prefix("net") {
            let (major, minor) = version(v)?;
            (major >= 5).then_some(Framework {
                is_core: true,
                major,
                minor,
            })
        } else {
            None
        }
    }

    /// The lowest .NET runtime major version that runs this framework (netstandard2.0 needs
    /// .NET Core 2.0, netstandard2.1 needs 3.0).
    pub(crate) fn runtime_major(self) -> u32 {
        match (self.is_core, self.minor) {
            (true, _) => self.major,
            (false, 0) => 2,
            (false, _) => 3,
        }
    }
}

fn dotnet(files: &[&str], runtime_major: Option<u32>, library: &str) -> Result<Layout, Problem> {
    let mut tfms: Vec<&str> = Vec::new();
    for file in files {
        if let Some(("lib", rest)) = file.split_once('/') {
            if let Some((tfm, _)) = rest.split_once('/') {
                if !tfms.contains(&tfm) {
                    tfms.push(tfm);
                }
            }
        }
    }
    if tfms.is_empty() {
        return Err(Problem::NoLibFolder);
    }
    let best = tfms
        .iter()
        .filter_map(|t| Framework::parse(t).map(|f| (f, *t)))
        .filter(|(f, _)| runtime_major.is_none_or(|m| f.runtime_major() <= m))
        .max();
    let Some((_, tfm)) = best else {
        tfms.sort_unstable();
        return Err(Problem::NoCompatibleFramework {
            runtime_major,
            tfms: tfms.iter().map(|t| t.to_string()).collect(),
        });
    };
    let folder = format!("lib/{tfm}/");
    let expected = format!("{folder}{library}.dll");
    if files.contains(&expected.as_str()) {
        return Ok(Layout {
            library_path: expected,
            rid: None,
            tfm: Some(tfm.to_string()),
        });
    }
    let mut dlls: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(folder.as_str()))
        .filter(|f| !f.contains('/') && f.to_ascii_lowercase().ends_with(".dll"))
        .map(str::to_string)
        .collect();
    dlls.sort_unstable();
    Err(Problem::MissingDll {
        folder,
        library: library.to_string(),
        dlls,
    })
}
