//! Worker packages end to end: a table of packages, each rule with its exact message; a
//! hostile-zip corpus built here (writer-made and byte-patched), each refused with its message
//! and nothing written outside a temporary root; extraction checks.

use std::collections::BTreeSet;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use wm_shared::package::{self, EngineKind, Limits, PackageError, PackageInfo, Target};
use zip::write::SimpleFileOptions;

const NS: &str = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";
const ELF: &[u8] = b"\x7fELF fake shared object for the tests";

fn x64() -> Target {
    Target { rid: "linux-x64".into(), dotnet_major: Some(8) }
}

fn nuspec(id: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="{NS}">
  <metadata>
    <id>{id}</id>
    <version>0.0.1</version>
    <authors>tests</authors>
    {extra}
  </metadata>
</package>
"#
    )
    .into_bytes()
}

/// One zip entry to write.
#[derive(Clone)]
enum E {
    File(&'static str, Vec<u8>),
    Owned(String, Vec<u8>),
    Stored(&'static str, Vec<u8>),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    Attrs(&'static str, u32, Vec<u8>),
}

fn zip(entries: &[E]) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let deflate = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for e in entries {
        match e {
            E::File(name, bytes) | E::Stored(name, bytes) => {
                let opts = if matches!(e, E::Stored(..)) {
                    deflate.compression_method(zip::CompressionMethod::Stored)
                } else {
                    deflate
                };
                zw.start_file(*name, opts).unwrap();
                zw.write_all(bytes).unwrap();
            }
            E::Owned(name, bytes) => {
                zw.start_file(name.as_str(), deflate).unwrap();
                zw.write_all(bytes).unwrap();
            }
            E::Dir(name) => zw.add_directory(*name, deflate).unwrap(),
            E::Symlink(name, target) => zw.add_symlink(*name, *target, deflate).unwrap(),
            E::Attrs(name, attrs, bytes) => {
                zw.start_file(*name, deflate.external_attributes(*attrs)).unwrap();
                zw.write_all(bytes).unwrap();
            }
        }
    }
    zw.finish().unwrap().into_inner()
}

/// Replaces every occurrence of `from` by `to` (same length): entry names live in both the
/// local and the central headers.
fn patch_all(mut bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert!(!hits.is_empty(), "nothing to patch");
    for i in hits {
        bytes[i..i + to.len()].copy_from_slice(to);
    }
    bytes
}

/// Offsets of every central and local header.
fn headers(bytes: &[u8], sig: [u8; 4]) -> Vec<usize> {
    bytes.windows(4).enumerate().filter(|(_, w)| *w == sig).map(|(i, _)| i).collect()
}
const CENTRAL: [u8; 4] = *b"PK\x01\x02";
const LOCAL: [u8; 4] = *b"PK\x03\x04";

/// Sets a little-endian field in every central header (offset from the header start) and,
/// when `local_at` is given, in every local header.
fn patch_field(mut bytes: Vec<u8>, central_at: usize, local_at: Option<usize>, value: &[u8]) -> Vec<u8> {
    for h in headers(&bytes, CENTRAL) {
        bytes[h + central_at..h + central_at + value.len()].copy_from_slice(value);
    }
    if let Some(at) = local_at {
        for h in headers(&bytes, LOCAL) {
            bytes[h + at..h + at + value.len()].copy_from_slice(value);
        }
    }
    bytes
}

fn native_pkg(extra_entries: &[E]) -> Vec<u8> {
    let mut entries = vec![
        E::File("Echo.nuspec", nuspec("Echo", "<virtufinLibrary>echo</virtufinLibrary>")),
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
    ];
    entries.extend_from_slice(extra_entries);
    zip(&entries)
}

fn messages(r: Result<PackageInfo, PackageError>) -> Vec<String> {
    match r {
        Ok(info) => panic!("expected a refusal, got {info:?}"),
        Err(e) => {
            // Display lists the same problems, one per line.
            let text = e.to_string();
            let got: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
            assert_eq!(text.lines().count(), got.len() + 1, "{text}");
            got
        }
    }
}

/// Everything an attempt writes goes under `sandbox/root`; the sandbox must hold nothing else
/// afterwards, and the root nothing but the extracted folder.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().unwrap() }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    /// Every path under the sandbox, relative, sorted.
    fn tree(&self) -> BTreeSet<String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.insert(p.strip_prefix(base).unwrap().display().to_string());
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
    /// Inspect then extract, as the supervisor does on deploy.
    fn deploy(&self, bytes: &[u8], engine: EngineKind, target: &Target, limits: &Limits) -> Result<PackageInfo, PackageError> {
        let info = package::inspect(bytes, engine, target, limits)?;
        package::extract(bytes, &info, &self.root(), limits)?;
        Ok(info)
    }
}

/// Runs a refused package through inspect + extract and checks the messages and that
/// nothing at all was written.
fn refused(bytes: &[u8], engine: EngineKind, target: &Target, limits: &Limits, expected: &[&str]) {
    let sandbox = Sandbox::new();
    let got = messages(sandbox.deploy(bytes, engine, target, limits));
    assert_eq!(got, expected);
    assert_eq!(sandbox.tree(), BTreeSet::new(), "a refused package wrote files");
}

fn native(bytes: &[u8], expected: &[&str]) {
    refused(bytes, EngineKind::Native, &x64(), &Limits::default(), expected);
}

// ---------------------------------------------------------------------------------------
// Valid packages

#[test]
fn native_package_is_inspected_and_extracted_for_both_rids() {
    let bytes = zip(&[
        E::File("Echo.nuspec", nuspec("Echo", "<virtufinLibrary>echo</virtufinLibrary><virtufinEntryPoint>run</virtufinEntryPoint>")),
        E::Dir("runtimes/"),
        E::File("runtimes/linux-x64/native/libecho.so", b"x64 library".to_vec()),
        E::File("runtimes/linux-arm64/native/libecho.so", b"arm64 library".to_vec()),
        E::File("README.md", b"not needed".to_vec()),
        E::File("[Content_Types].xml", b"<Types/>".to_vec()),
    ]);
    for (rid, content) in [("linux-x64", &b"x64 library"[..]), ("linux-arm64", &b"arm64 library"[..])] {
        let sandbox = Sandbox::new();
        let target = Target { rid: rid.into(), dotnet_major: None };
        let info = package::inspect(&bytes, EngineKind::Native, &target, &Limits::default()).unwrap();
        assert_eq!(
            info,
            PackageInfo {
                id: "Echo".into(),
                version: "0.0.1".into(),
                abi_version: 1,
                library: "echo".into(),
                entry_point: "run".into(),
                free_result: "FreeResult".into(),
                engine: EngineKind::Native,
                library_path: format!("runtimes/{rid}/native/libecho.so"),
                rid: Some(rid.into()),
                tfm: None,
                sha256: package::sha256_hex(&bytes),
                size: bytes.len() as u64,
            }
        );
        let dir = package::extract(&bytes, &info, &sandbox.root(), &Limits::default()).unwrap();
        assert_eq!(dir, sandbox.root().join(&info.sha256));
        assert_eq!(std::fs::read(dir.join(&info.library_path)).unwrap(), content);
        let sha = &info.sha256;
        let expected: BTreeSet<String> = [
            "root".to_string(),
            format!("root/{sha}"),
            format!("root/{sha}/Echo.nuspec"),
            format!("root/{sha}/runtimes"),
            format!("root/{sha}/runtimes/{rid}"),
            format!("root/{sha}/runtimes/{rid}/native"),
            format!("root/{sha}/runtimes/{rid}/native/libecho.so"),
        ]
        .into_iter()
        .collect();
        assert_eq!(sandbox.tree(), expected, "only the nuspec and this RID's library are extracted");
        assert_modes(&dir);
    }
}

fn assert_modes(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(dir), 0o755);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                assert_eq!(mode(&p), 0o755, "{}", p.display());
                stack.push(p);
            } else {
                assert!(m.is_file(), "only files and folders are written: {}", p.display());
                assert_eq!(mode(&p), 0o644, "{}", p.display());
            }
        }
    }
}

#[test]
fn dotnet_package_picks_the_best_framework_and_extracts_its_folder() {
    let bytes = zip(&[
        E::File("Virtufin.Worker.Echo.nuspec", nuspec("Virtufin.Worker.Echo", "")),
        E::File("lib/netstandard2.0/Virtufin.Worker.Echo.dll", b"ns20".to_vec()),
        E::File("lib/netcoreapp3.1/Virtufin.Worker.Echo.dll", b"core31".to_vec()),
        E::File("lib/netcoreapp3.1/Helper.dll", b"helper".to_vec()),
        E::File("lib/netcoreapp3.1/de/Virtufin.Worker.Echo.resources.dll", b"de".to_vec()),
        E::File("lib/net8.0/Virtufin.Worker.Echo.dll", b"net8".to_vec()),
        E::File("package/services/metadata/core-properties/x.psmdcp", b"<x/>".to_vec()),
    ]);
    let limits = Limits::default();
    let pick = |major| {
        package::inspect(&bytes, EngineKind::DotNet, &Target { rid: "linux-x64".into(), dotnet_major: major }, &limits).unwrap()
    };
    assert_eq!(pick(Some(8)).tfm.as_deref(), Some("net8.0"));
    assert_eq!(pick(None).tfm.as_deref(), Some("net8.0"));
    assert_eq!(pick(Some(2)).tfm.as_deref(), Some("netstandard2.0"));
    let info = pick(Some(3));
    assert_eq!(info.tfm.as_deref(), Some("netcoreapp3.1"));
    assert_eq!(info.library_path, "lib/netcoreapp3.1/Virtufin.Worker.Echo.dll");
    assert_eq!((info.library.as_str(), info.rid.as_deref()), ("Virtufin.Worker.Echo", None));

    let sandbox = Sandbox::new();
    let dir = package::extract(&bytes, &info, &sandbox.root(), &limits).unwrap();
    assert_eq!(std::fs::read(dir.join(&info.library_path)).unwrap(), b"core31");
    let sha = &info.sha256;
    let files: BTreeSet<String> = sandbox.tree().into_iter().filter(|p| !std::path::Path::new(&sandbox.dir.path().join(p)).is_dir()).collect();
    let expected: BTreeSet<String> = [
        format!("root/{sha}/Virtufin.Worker.Echo.nuspec"),
        format!("root/{sha}/lib/netcoreapp3.1/Virtufin.Worker.Echo.dll"),
        format!("root/{sha}/lib/netcoreapp3.1/Helper.dll"),
        format!("root/{sha}/lib/netcoreapp3.1/de/Virtufin.Worker.Echo.resources.dll"),
    ]
    .into_iter()
    .collect();
    assert_eq!(files, expected);
    assert_modes(&dir);
}

// ---------------------------------------------------------------------------------------
// The rules, one row each, with the exact messages

#[test]
fn every_package_rule_has_its_message() {
    let so = |rid: &str| E::Owned(format!("runtimes/{rid}/native/libecho.so"), ELF.to_vec());
    let spec = |extra: &str| E::File("Echo.nuspec", nuspec("Echo", &format!("<virtufinLibrary>echo</virtufinLibrary>{extra}")));
    let dll = |path: &'static str| E::File(path, b"MZ".to_vec());
    struct Row {
        what: &'static str,
        engine: EngineKind,
        entries: Vec<E>,
        expected: Vec<&'static str>,
    }
    let rows = vec![
        Row {
            what: "no nuspec",
            engine: EngineKind::Native,
            entries: vec![so("linux-x64")],
            expected: vec!["no .nuspec file at the package root"],
        },
        Row {
            what: "nuspec in a subfolder",
            engine: EngineKind::Native,
            entries: vec![E::File("content/Echo.nuspec", nuspec("Echo", "")), so("linux-x64")],
            expected: vec![r#"no .nuspec file at the package root; found "content/Echo.nuspec" in a subfolder, move it to the root"#],
        },
        Row {
            what: "two nuspecs",
            engine: EngineKind::Native,
            entries: vec![spec(""), E::File("Other.NUSPEC", nuspec("Other", "")), so("linux-x64")],
            expected: vec![r#"more than one .nuspec file at the package root ("Echo.nuspec", "Other.NUSPEC"); keep exactly one"#],
        },
        Row {
            what: "abi version 2",
            engine: EngineKind::Native,
            entries: vec![spec("<virtufinAbiVersion>2</virtufinAbiVersion>"), so("linux-x64")],
            expected: vec!["virtufinAbiVersion 2 is not supported; supported versions: 1"],
        },
        Row {
            what: "abi version ignored by .NET",
            engine: EngineKind::DotNet,
            entries: vec![spec("<virtufinAbiVersion>2</virtufinAbiVersion>"), dll("lib/net8.0/echo.dll")],
            expected: vec![],
        },
        Row {
            what: "wrong RID only",
            engine: EngineKind::Native,
            entries: vec![spec(""), so("linux-arm64"), so("osx-arm64")],
            expected: vec![
                r#"no native library for linux-x64: expected "runtimes/linux-x64/native/libecho.so"; the package has native libraries for: linux-arm64, osx-arm64"#,
            ],
        },
        Row {
            what: "library named after the id by default",
            engine: EngineKind::Native,
            entries: vec![E::File("Echo.nuspec", nuspec("Echo", "")), so("linux-x64")],
            expected: vec![
                r#"no native library for linux-x64: expected "runtimes/linux-x64/native/libEcho.so"; the package has native libraries for: linux-x64; the folder for this RID holds "libecho.so""#,
            ],
        },
        Row {
            what: ".NET package without lib/",
            engine: EngineKind::DotNet,
            entries: vec![spec(""), so("linux-x64")],
            expected: vec!["no lib/<tfm>/ folder with files; a .NET worker ships lib/<tfm>/<library>.dll"],
        },
        Row {
            what: ".NET DLL not named after virtufinLibrary",
            engine: EngineKind::DotNet,
            entries: vec![spec(""), dll("lib/net8.0/Echo.Worker.dll"), dll("lib/net8.0/Dep.dll")],
            expected: vec![
                "lib/net8.0/ has no echo.dll (virtufinLibrary must equal the worker DLL's basename); its DLLs: Dep.dll, Echo.Worker.dll",
            ],
        },
        Row {
            what: ".NET framework too new for the host",
            engine: EngineKind::DotNet,
            entries: vec![spec(""), dll("lib/net10.0/echo.dll"), dll("lib/net48/echo.dll")],
            expected: vec!["no lib/<tfm>/ folder that this host's .NET 8 runtime can run; the package has: net10.0, net48"],
        },
        Row {
            what: "everything wrong at once is reported at once",
            engine: EngineKind::Native,
            entries: vec![
                E::File("Echo.nuspec", nuspec("", "<virtufinLibrary>echo</virtufinLibrary><virtufinAbiVersion>x</virtufinAbiVersion><virtufinFreeResult>free me</virtufinFreeResult>")),
                E::File("../escape.txt", b"x".to_vec()),
                E::Symlink("runtimes/linux-x64/native/libecho.so", "/etc/passwd"),
                so("linux-arm64"),
            ],
            expected: vec![
                r#"entry "../escape.txt" has a '..' component, which would point outside the package"#,
                r#"entry "runtimes/linux-x64/native/libecho.so" is a symbolic link; packages may contain only regular files and folders"#,
                "nuspec <metadata> has no <id>, which is required",
                r#"virtufinAbiVersion "x" is not an integer"#,
                r#"virtufinFreeResult "free me" is not a valid C identifier (letters, digits and '_', not starting with a digit)"#,
                r#"no native library for linux-x64: expected "runtimes/linux-x64/native/libecho.so"; the package has native libraries for: linux-arm64"#,
            ],
        },
    ];
    for row in rows {
        let bytes = zip(&row.entries);
        let sandbox = Sandbox::new();
        let result = sandbox.deploy(&bytes, row.engine, &x64(), &Limits::default());
        if row.expected.is_empty() {
            assert!(result.is_ok(), "{}: {:?}", row.what, result.err().map(|e| e.to_string()));
        } else {
            assert_eq!(messages(result), row.expected, "{}", row.what);
            assert_eq!(sandbox.tree(), BTreeSet::new(), "{}: a refused package wrote files", row.what);
        }
    }
}

#[test]
fn not_a_zip_and_too_large_are_refused() {
    native(b"this is plain text, not a zip", &["package is not a readable zip archive (invalid Zip archive: Could not find EOCD); a .nupkg must be a zip file"]);
    let bytes = native_pkg(&[]);
    let limits = Limits { max_package_bytes: 100, ..Limits::default() };
    let expected = format!("package is {} bytes, over the limit of 100 bytes", bytes.len());
    refused(&bytes, EngineKind::Native, &x64(), &limits, &[expected.as_str()]);
}

#[test]
fn nuspec_over_its_limit_is_refused() {
    let padding = format!("<description>{}</description>", "x".repeat(4096));
    let bytes = zip(&[
        E::File("Echo.nuspec", nuspec("Echo", &format!("<virtufinLibrary>echo</virtufinLibrary>{padding}"))),
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
    ]);
    let limits = Limits { max_nuspec_bytes: 1024, ..Limits::default() };
    refused(&bytes, EngineKind::Native, &x64(), &limits, &[r#"nuspec "Echo.nuspec" is over the limit of 1024 bytes"#]);
}
