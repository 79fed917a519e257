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
    /// Accepted deviations from the layout, for the author (e.g. the seed's layout).
    pub warnings: Vec<String>,
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
        EngineKind::CSharpSource => Err(Problem::Source {
            reason: "text/x-csharp code is one C# source file, not a package".to_owned(),
        }),
        // Not an archive: inspect() hands Python source to python_source first.
        EngineKind::Python | EngineKind::PythonWheel => Err(Problem::PythonSource(
            "python code is not checked by the nupkg layout rules".into(),
        )),
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
            warnings: Vec::new(),
        });
    }
    // The seed's quick-start script zips from inside `runtimes/`, which drops that prefix.
    // Accepted so the walkthrough works verbatim, with a warning naming the right layout.
    let seed = format!("{rid}/native/lib{library}.so");
    if files.contains(&seed.as_str()) {
        return Ok(Layout {
            warnings: vec![format!(
                "the package has \"{seed}\" without the runtimes/ prefix (the seed's quick-start script drops it); it is accepted, but the expected layout is \"{expected}\" (workmanager pack builds it)"
            )],
            library_path: seed,
            rid: Some(rid.to_string()),
            tfm: None,
        });
    }
    let mut rids = BTreeSet::new();
    let mut present = Vec::new();
    for file in files {
        let parts: Vec<&str> = file.split('/').collect();
        if let ["runtimes", r, "native", rest @ ..] = parts.as_slice()
            && !rest.is_empty()
        {
            rids.insert(r.to_string());
            if *r == rid && rest.len() == 1 {
                present.push(rest[0].to_string());
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
        if let Some(("lib", rest)) = file.split_once('/')
            && let Some((tfm, _)) = rest.split_once('/')
            && !tfms.contains(&tfm)
        {
            tfms.push(tfm);
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
            warnings: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(tfm: &str) -> Option<(bool, u32, u32)> {
        Framework::parse(tfm).map(|f| (f.is_core, f.major, f.minor))
    }

    #[test]
    fn frameworks_parse_and_need_a_runtime() {
        assert_eq!(fw("netcoreapp3.1"), Some((true, 3, 1)));
        assert_eq!(fw("NET8.0"), Some((true, 8, 0)));
        assert_eq!(fw("net10.0"), Some((true, 10, 0)));
        assert_eq!(fw("netstandard2.0"), Some((false, 2, 0)));
        assert_eq!(fw("netstandard2.1"), Some((false, 2, 1)));
        for unknown in [
            "net48",
            "net472",
            "net8.0-windows",
            "netstandard1.3",
            "netcoreapp5.0",
            "net4.0",
            "native",
            "netstandard",
        ] {
            assert_eq!(fw(unknown), None, "{unknown}");
        }
        let major = |t: &str| Framework::parse(t).map(Framework::runtime_major);
        assert_eq!(major("netstandard2.0"), Some(2));
        assert_eq!(major("netstandard2.1"), Some(3));
        assert_eq!(major("netcoreapp3.1"), Some(3));
        assert_eq!(major("net8.0"), Some(8));
    }

    fn pick(files: &[&str], major: Option<u32>, library: &str) -> Result<Layout, String> {
        dotnet(files, major, library).map_err(|p| p.to_string())
    }

    #[test]
    fn the_highest_framework_the_runtime_runs_wins() {
        let files = [
            "lib/netstandard2.0/W.dll",
            "lib/netstandard2.1/W.dll",
            "lib/netcoreapp3.1/W.dll",
            "lib/net6.0/W.dll",
            "lib/net8.0/W.dll",
            "lib/net8.0-windows/W.dll",
        ];
        let tfm = |m| pick(&files, m, "W").map(|l| l.tfm.unwrap());
        assert_eq!(tfm(Some(2)), Ok("netstandard2.0".into()));
        assert_eq!(tfm(Some(3)), Ok("netcoreapp3.1".into()));
        assert_eq!(tfm(Some(7)), Ok("net6.0".into()));
        assert_eq!(tfm(Some(8)), Ok("net8.0".into()));
        assert_eq!(tfm(Some(10)), Ok("net8.0".into()));
        assert_eq!(tfm(None), Ok("net8.0".into()));
        // A runtime-specific folder beats .NET Standard for the same runtime.
        assert_eq!(
            pick(
                &["lib/netstandard2.1/W.dll", "lib/netcoreapp3.0/W.dll"],
                Some(3),
                "W"
            )
            .map(|l| l.library_path),
            Ok("lib/netcoreapp3.0/W.dll".into())
        );
    }

    #[test]
    fn dotnet_layout_problems_name_what_is_there() {
        assert_eq!(
            pick(&["W.nuspec", "readme.txt"], Some(8), "W"),
            Err(
                "no lib/<tfm>/ folder with files; a .NET worker ships lib/<tfm>/<library>.dll"
                    .into()
            )
        );
        assert_eq!(
            pick(&["lib/net8.0/W.dll", "lib/net48/W.dll"], Some(3), "W"),
            Err("no lib/<tfm>/ folder that this host's .NET 3 runtime can run; the package has: net48, net8.0".into())
        );
        assert_eq!(
            pick(&["lib/net48/W.dll"], None, "W"),
            Err("no lib/<tfm>/ folder that a .NET runtime can run; the package has: net48".into())
        );
        assert_eq!(
            pick(&["lib/net8.0/Other.dll", "lib/net8.0/Dep.dll", "lib/net8.0/x.pdb"], Some(8), "W"),
            Err("lib/net8.0/ has no W.dll (virtufinLibrary must equal the worker DLL's basename); its DLLs: Dep.dll, Other.dll".into())
        );
        assert_eq!(
            pick(&["lib/net8.0/W.xml"], Some(8), "W"),
            Err("lib/net8.0/ has no W.dll (virtufinLibrary must equal the worker DLL's basename); the folder has no DLLs".into())
        );
        // The basename must match exactly.
        assert!(pick(&["lib/net8.0/w.dll"], Some(8), "W").is_err());
    }

    #[test]
    fn the_seed_layout_is_accepted_with_a_warning() {
        let l = native(
            &["x.nuspec", "linux-x64/native/libecho.so"],
            "linux-x64",
            "echo",
        )
        .unwrap();
        assert_eq!(l.library_path, "linux-x64/native/libecho.so");
        assert_eq!(l.warnings.len(), 1);
        assert!(
            l.warnings[0].contains("\"runtimes/linux-x64/native/libecho.so\""),
            "{:?}",
            l.warnings
        );
        // Another RID's seed folder is no substitute.
        assert!(native(&["linux-arm64/native/libecho.so"], "linux-x64", "echo").is_err());
    }

    #[test]
    fn native_layout_takes_the_rid_folder_of_this_host() {
        let files = [
            "X.nuspec",
            "runtimes/linux-x64/native/libecho.so",
            "runtimes/linux-arm64/native/libecho.so",
        ];
        for rid in ["linux-x64", "linux-arm64"] {
            let l = native(&files, rid, "echo").unwrap();
            assert_eq!(l.library_path, format!("runtimes/{rid}/native/libecho.so"));
            assert_eq!(l.rid.as_deref(), Some(rid));
        }
        let msg =
            |files: &[&str], rid: &str, lib: &str| native(files, rid, lib).unwrap_err().to_string();
        assert_eq!(
            msg(
                &["runtimes/linux-arm64/native/libecho.so"],
                "linux-x64",
                "echo"
            ),
            r#"no native library for linux-x64: expected "runtimes/linux-x64/native/libecho.so"; the package has native libraries for: linux-arm64"#
        );
        assert_eq!(
            msg(&["X.nuspec", "libecho.so"], "linux-arm64", "echo"),
            r#"no native library for linux-arm64: expected "runtimes/linux-arm64/native/libecho.so"; the package has no runtimes/<rid>/native/ folder"#
        );
        assert_eq!(
            msg(
                &[
                    "runtimes/linux-x64/native/echo.so",
                    "runtimes/win-x64/native/echo.dll"
                ],
                "linux-x64",
                "echo"
            ),
            r#"no native library for linux-x64: expected "runtimes/linux-x64/native/libecho.so"; the package has native libraries for: linux-x64, win-x64; the folder for this RID holds "echo.so""#
        );
        assert_eq!(
            msg(&files, "linux-riscv64", "echo"),
            r#"this host's runtime identifier "linux-riscv64" is not supported; native workers run on linux-x64, linux-arm64"#
        );
    }
}
