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
    Target {
        rid: "linux-x64".into(),
        dotnet_major: Some(8),
    }
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
                zw.start_file(*name, deflate.external_attributes(*attrs))
                    .unwrap();
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
    let hits: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "nothing to patch");
    for i in hits {
        bytes[i..i + to.len()].copy_from_slice(to);
    }
    bytes
}

/// Offsets of every central and local header.
fn headers(bytes: &[u8], sig: [u8; 4]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect()
}
const CENTRAL: [u8; 4] = *b"PK\x01\x02";
const LOCAL: [u8; 4] = *b"PK\x03\x04";

fn native_pkg(extra_entries: &[E]) -> Vec<u8> {
    let mut entries = vec![
        E::File(
            "Echo.nuspec",
            nuspec("Echo", "<virtufinLibrary>echo</virtufinLibrary>"),
        ),
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
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
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
    fn deploy(
        &self,
        bytes: &[u8],
        engine: EngineKind,
        target: &Target,
        limits: &Limits,
    ) -> Result<PackageInfo, PackageError> {
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
    assert_eq!(
        sandbox.tree(),
        BTreeSet::new(),
        "a refused package wrote files"
    );
}

fn native(bytes: &[u8], expected: &[&str]) {
    refused(
        bytes,
        EngineKind::Native,
        &x64(),
        &Limits::default(),
        expected,
    );
}

// ---------------------------------------------------------------------------------------
// Valid packages

#[test]
fn native_package_is_inspected_and_extracted_for_both_rids() {
    let bytes = zip(&[
        E::File(
            "Echo.nuspec",
            nuspec(
                "Echo",
                "<virtufinLibrary>echo</virtufinLibrary><virtufinEntryPoint>run</virtufinEntryPoint>",
            ),
        ),
        E::Dir("runtimes/"),
        E::File(
            "runtimes/linux-x64/native/libecho.so",
            b"x64 library".to_vec(),
        ),
        E::File(
            "runtimes/linux-arm64/native/libecho.so",
            b"arm64 library".to_vec(),
        ),
        E::File("README.md", b"not needed".to_vec()),
        E::File("[Content_Types].xml", b"<Types/>".to_vec()),
    ]);
    for (rid, content) in [
        ("linux-x64", &b"x64 library"[..]),
        ("linux-arm64", &b"arm64 library"[..]),
    ] {
        let sandbox = Sandbox::new();
        let target = Target {
            rid: rid.into(),
            dotnet_major: None,
        };
        let info =
            package::inspect(&bytes, EngineKind::Native, &target, &Limits::default()).unwrap();
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
                warnings: Vec::new(),
            }
        );
        let dir = package::extract(&bytes, &info, &sandbox.root(), &Limits::default()).unwrap();
        assert_eq!(dir, sandbox.root().join(&info.sha256));
        assert_eq!(
            std::fs::read(dir.join(&info.library_path)).unwrap(),
            content
        );
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
        assert_eq!(
            sandbox.tree(),
            expected,
            "only the nuspec and this RID's library are extracted"
        );
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
                assert!(
                    m.is_file(),
                    "only files and folders are written: {}",
                    p.display()
                );
                assert_eq!(mode(&p), 0o644, "{}", p.display());
            }
        }
    }
}

#[test]
fn dotnet_package_picks_the_best_framework_and_extracts_its_folder() {
    let bytes = zip(&[
        E::File(
            "Virtufin.Worker.Echo.nuspec",
            nuspec("Virtufin.Worker.Echo", ""),
        ),
        E::File(
            "lib/netstandard2.0/Virtufin.Worker.Echo.dll",
            b"ns20".to_vec(),
        ),
        E::File(
            "lib/netcoreapp3.1/Virtufin.Worker.Echo.dll",
            b"core31".to_vec(),
        ),
        E::File("lib/netcoreapp3.1/Helper.dll", b"helper".to_vec()),
        E::File(
            "lib/netcoreapp3.1/de/Virtufin.Worker.Echo.resources.dll",
            b"de".to_vec(),
        ),
        E::File("lib/net8.0/Virtufin.Worker.Echo.dll", b"net8".to_vec()),
        E::File(
            "package/services/metadata/core-properties/x.psmdcp",
            b"<x/>".to_vec(),
        ),
    ]);
    let limits = Limits::default();
    let pick = |major| {
        package::inspect(
            &bytes,
            EngineKind::DotNet,
            &Target {
                rid: "linux-x64".into(),
                dotnet_major: major,
            },
            &limits,
        )
        .unwrap()
    };
    assert_eq!(pick(Some(8)).tfm.as_deref(), Some("net8.0"));
    assert_eq!(pick(None).tfm.as_deref(), Some("net8.0"));
    assert_eq!(pick(Some(2)).tfm.as_deref(), Some("netstandard2.0"));
    let info = pick(Some(3));
    assert_eq!(info.tfm.as_deref(), Some("netcoreapp3.1"));
    assert_eq!(
        info.library_path,
        "lib/netcoreapp3.1/Virtufin.Worker.Echo.dll"
    );
    assert_eq!(
        (info.library.as_str(), info.rid.as_deref()),
        ("Virtufin.Worker.Echo", None)
    );

    let sandbox = Sandbox::new();
    let dir = package::extract(&bytes, &info, &sandbox.root(), &limits).unwrap();
    assert_eq!(
        std::fs::read(dir.join(&info.library_path)).unwrap(),
        b"core31"
    );
    let sha = &info.sha256;
    let files: BTreeSet<String> = sandbox
        .tree()
        .into_iter()
        .filter(|p| !std::path::Path::new(&sandbox.dir.path().join(p)).is_dir())
        .collect();
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
    let spec = |extra: &str| {
        E::File(
            "Echo.nuspec",
            nuspec(
                "Echo",
                &format!("<virtufinLibrary>echo</virtufinLibrary>{extra}"),
            ),
        )
    };
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
            entries: vec![
                E::File("content/Echo.nuspec", nuspec("Echo", "")),
                so("linux-x64"),
            ],
            expected: vec![
                r#"no .nuspec file at the package root; found "content/Echo.nuspec" in a subfolder, move it to the root"#,
            ],
        },
        Row {
            what: "two nuspecs",
            engine: EngineKind::Native,
            entries: vec![
                spec(""),
                E::File("Other.NUSPEC", nuspec("Other", "")),
                so("linux-x64"),
            ],
            expected: vec![
                r#"more than one .nuspec file at the package root ("Echo.nuspec", "Other.NUSPEC"); keep exactly one"#,
            ],
        },
        Row {
            what: "abi version 2",
            engine: EngineKind::Native,
            entries: vec![
                spec("<virtufinAbiVersion>2</virtufinAbiVersion>"),
                so("linux-x64"),
            ],
            expected: vec!["virtufinAbiVersion 2 is not supported; supported versions: 1"],
        },
        Row {
            what: "abi version ignored by .NET",
            engine: EngineKind::DotNet,
            entries: vec![
                spec("<virtufinAbiVersion>2</virtufinAbiVersion>"),
                dll("lib/net8.0/echo.dll"),
            ],
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
            expected: vec![
                "no lib/<tfm>/ folder with files; a .NET worker ships lib/<tfm>/<library>.dll",
            ],
        },
        Row {
            what: ".NET DLL not named after virtufinLibrary",
            engine: EngineKind::DotNet,
            entries: vec![
                spec(""),
                dll("lib/net8.0/Echo.Worker.dll"),
                dll("lib/net8.0/Dep.dll"),
            ],
            expected: vec![
                "lib/net8.0/ has no echo.dll (virtufinLibrary must equal the worker DLL's basename); its DLLs: Dep.dll, Echo.Worker.dll",
            ],
        },
        Row {
            what: ".NET framework too new for the host",
            engine: EngineKind::DotNet,
            entries: vec![
                spec(""),
                dll("lib/net10.0/echo.dll"),
                dll("lib/net48/echo.dll"),
            ],
            expected: vec![
                "no lib/<tfm>/ folder that this host's .NET 8 runtime can run; the package has: net10.0, net48",
            ],
        },
        Row {
            what: "everything wrong at once is reported at once",
            engine: EngineKind::Native,
            entries: vec![
                E::File(
                    "Echo.nuspec",
                    nuspec(
                        "",
                        "<virtufinLibrary>echo</virtufinLibrary><virtufinAbiVersion>x</virtufinAbiVersion><virtufinFreeResult>free me</virtufinFreeResult>",
                    ),
                ),
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
            assert!(
                result.is_ok(),
                "{}: {:?}",
                row.what,
                result.err().map(|e| e.to_string())
            );
        } else {
            assert_eq!(messages(result), row.expected, "{}", row.what);
            assert_eq!(
                sandbox.tree(),
                BTreeSet::new(),
                "{}: a refused package wrote files",
                row.what
            );
        }
    }
}

#[test]
fn not_a_zip_and_too_large_are_refused() {
    native(
        b"this is plain text, not a zip",
        &[
            "package is not a readable zip archive (invalid Zip archive: Could not find EOCD); a .nupkg must be a zip file",
        ],
    );
    let bytes = native_pkg(&[]);
    let limits = Limits {
        max_package_bytes: 100,
        ..Limits::default()
    };
    let expected = format!(
        "package is {} bytes, over the limit of 100 bytes",
        bytes.len()
    );
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &[expected.as_str()],
    );
}

#[test]
fn nuspec_over_its_limit_is_refused() {
    let padding = format!("<description>{}</description>", "x".repeat(4096));
    let bytes = zip(&[
        E::File(
            "Echo.nuspec",
            nuspec(
                "Echo",
                &format!("<virtufinLibrary>echo</virtufinLibrary>{padding}"),
            ),
        ),
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
    ]);
    let limits = Limits {
        max_nuspec_bytes: 1024,
        ..Limits::default()
    };
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &[r#"nuspec "Echo.nuspec" is over the limit of 1024 bytes"#],
    );
}

// ---------------------------------------------------------------------------------------
// The hostile-zip corpus

#[test]
fn zip_slip_names_are_refused() {
    let cases: Vec<(&'static str, &str)> = vec![
        (
            "../evil.so",
            r#"entry "../evil.so" has a '..' component, which would point outside the package"#,
        ),
        (
            "runtimes/../../../tmp/evil.so",
            r#"entry "runtimes/../../../tmp/evil.so" has a '..' component, which would point outside the package"#,
        ),
        (
            "/tmp/evil.so",
            r#"entry "/tmp/evil.so" is an absolute path"#,
        ),
        (
            "..\\..\\evil.so",
            r#"entry "..\\..\\evil.so" contains a backslash; zip paths use '/'"#,
        ),
        (
            "C:/Windows/evil.dll",
            r#"entry "C:/Windows/evil.dll" starts with a drive letter"#,
        ),
        (
            "evil\n.so",
            r#"entry "evil\n.so" contains a control character"#,
        ),
    ];
    for (name, expected) in cases {
        native(
            &native_pkg(&[E::File(name, b"pwned".to_vec())]),
            &[expected],
        );
    }
}

#[test]
fn symlink_and_special_entries_are_refused() {
    // A link pointing outside, then a file written "through" it: both refused.
    native(
        &native_pkg(&[
            E::Symlink("out", "/etc"),
            E::File("out/cron.d/evil", b"* * * * * root sh".to_vec()),
        ]),
        &[r#"entry "out" is a symbolic link; packages may contain only regular files and folders"#],
    );
    native(
        &native_pkg(&[E::Symlink("link.so", "../../../../etc/passwd")]),
        &[
            r#"entry "link.so" is a symbolic link; packages may contain only regular files and folders"#,
        ],
    );
    // A FIFO (S_IFIFO) and a block device in the unix mode bits.
    native(
        &native_pkg(&[
            E::Attrs("fifo", 0o010644 << 16, Vec::new()),
            E::Attrs("disk", 0o060600 << 16, Vec::new()),
        ]),
        &[
            r#"entry "fifo" is a special file (mode 10644); packages may contain only regular files and folders"#,
            r#"entry "disk" is a special file (mode 60600); packages may contain only regular files and folders"#,
        ],
    );
}

#[test]
fn duplicate_names_are_refused_exactly_by_case_and_after_normalisation() {
    // The writer refuses exact duplicates, so write distinct names and patch them equal.
    let bytes = native_pkg(&[
        E::File("dupA", b"1".to_vec()),
        E::File("dupB", b"2".to_vec()),
        E::File("dupC", b"3".to_vec()),
    ]);
    let bytes = patch_all(patch_all(bytes, b"dupB", b"dupA"), b"dupC", b"dupA");
    native(&bytes, &[r#"entry "dupA" appears 3 times"#]);
    // The library itself duplicated: one copy could be benign, the other not.
    let bytes = zip(&[
        E::File(
            "Echo.nuspec",
            nuspec("Echo", "<virtufinLibrary>echo</virtufinLibrary>"),
        ),
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
        E::File("runtimes/linux-x64/native/libEVIL.so", b"evil".to_vec()),
    ]);
    native(
        &patch_all(bytes, b"libEVIL", b"libecho"),
        &[r#"entry "runtimes/linux-x64/native/libecho.so" appears 2 times"#],
    );

    native(
        &native_pkg(&[
            E::File("Readme.txt", b"1".to_vec()),
            E::File("README.TXT", b"2".to_vec()),
        ]),
        &[
            r#"entries "Readme.txt" and "README.TXT" name the same file (names must differ after case folding and normalisation)"#,
        ],
    );
    native(
        &native_pkg(&[E::File(
            "./runtimes//linux-x64/native/libecho.so",
            b"evil".to_vec(),
        )]),
        &[
            r#"entries "runtimes/linux-x64/native/libecho.so" and "./runtimes//linux-x64/native/libecho.so" name the same file (names must differ after case folding and normalisation)"#,
        ],
    );
    native(
        &native_pkg(&[
            E::File("a", b"file".to_vec()),
            E::File("a/b", b"inside a file".to_vec()),
        ]),
        &[r#"entry "a/b" is inside "a", which is a file"#],
    );
}

#[test]
fn deep_nesting_and_long_names_are_refused() {
    let deep = format!("{}f", "d/".repeat(40));
    let expected = format!("entry {deep:?} is nested 41 folders deep, over the limit of 32");
    native(
        &native_pkg(&[E::Owned(deep, b"x".to_vec())]),
        &[expected.as_str()],
    );
    let long = format!("{}/f", vec!["abcdefgh"; 120].join("/"));
    let expected = format!("entry {long:?} is 1081 bytes long, over the limit of 1024");
    native(
        &native_pkg(&[E::Owned(long, b"x".to_vec())]),
        &[expected.as_str()],
    );
}

#[test]
fn thousands_of_entries_are_refused_before_they_are_read() {
    let mut entries = vec![E::File("Echo.nuspec", nuspec("Echo", ""))];
    entries.extend((0..10_000).map(|i| E::Owned(format!("f/{i}"), Vec::new())));
    native(
        &zip(&entries),
        &["package has 10001 entries, over the limit of 10000"],
    );
    // A smaller limit, and an entry count that lies low in the end record: the zip reader
    // reads only the declared count, so the rest of the directory is never walked.
    let limits = Limits {
        max_entries: 50,
        ..Limits::default()
    };
    let entries: Vec<E> = (0..60)
        .map(|i| E::Owned(format!("f{i:02}"), Vec::new()))
        .collect();
    refused(
        &zip(&entries),
        EngineKind::Native,
        &x64(),
        &limits,
        &["package has 60 entries, over the limit of 50"],
    );
}

#[test]
fn non_utf8_names_are_refused() {
    // Written as ASCII, then patched to bytes that are not UTF-8 (and no UTF-8 flag is set).
    let bytes = native_pkg(&[E::File("n@me.so", b"x".to_vec())]);
    let bytes = patch_all(bytes, b"n@me", b"n\xffm\xfe");
    native(
        &bytes,
        &["entry \"n\u{fffd}m\u{fffd}.so\" is not valid UTF-8"],
    );
}

#[test]
fn encrypted_and_unknown_compression_entries_are_refused() {
    let bytes = native_pkg(&[E::Stored("secret.bin", b"ciphertext".to_vec())]);
    // Set the "encrypted" flag (bit 0 of the general purpose flags) on the last entry only:
    // central header offset 8, local header offset 6.
    let mut bytes = bytes;
    let c = *headers(&bytes, CENTRAL).last().unwrap();
    bytes[c + 8] |= 1;
    let l = *headers(&bytes, LOCAL).last().unwrap();
    bytes[l + 6] |= 1;
    native(
        &bytes,
        &[r#"entry "secret.bin" is encrypted; packages must not be encrypted"#],
    );

    // An encrypted nuspec: that is the one problem, not also "no nuspec".
    let mut bytes = zip(&[
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
        E::Stored("Echo.nuspec", nuspec("Echo", "")),
    ]);
    let c = *headers(&bytes, CENTRAL).last().unwrap();
    bytes[c + 8] |= 1;
    native(
        &bytes,
        &[r#"entry "Echo.nuspec" is encrypted; packages must not be encrypted"#],
    );

    let mut bytes = native_pkg(&[E::Stored("packed.bin", b"data".to_vec())]);
    let c = *headers(&bytes, CENTRAL).last().unwrap();
    bytes[c + 10..c + 12].copy_from_slice(&12u16.to_le_bytes()); // bzip2
    let l = *headers(&bytes, LOCAL).last().unwrap();
    bytes[l + 8..l + 10].copy_from_slice(&12u16.to_le_bytes());
    native(
        &bytes,
        &[
            r#"entry "packed.bin" uses compression method Bzip2; only stored and deflate are supported"#,
        ],
    );
}

#[test]
fn corrupt_entry_data_is_refused() {
    let payload = b"0123456789abcdef".repeat(64);
    let mut bytes = native_pkg(&[E::Stored("data.bin", payload.clone())]);
    let at = bytes
        .windows(16)
        .rposition(|w| w == b"0123456789abcdef")
        .unwrap();
    bytes[at] ^= 0xff; // the CRC no longer matches
    native(
        &bytes,
        &[r#"entry "data.bin" cannot be read: Invalid checksum"#],
    );
}

#[test]
fn zip_bomb_by_ratio_is_refused_from_the_headers() {
    // 8 MiB of zeros deflate to ~8 KiB: a ratio near 1000.
    let bytes = native_pkg(&[E::File("bomb.bin", vec![0u8; 8 << 20])]);
    assert!(bytes.len() < 64 << 10);
    native(
        &bytes,
        &[
            r#"entry "bomb.bin" expands more than 200 times its compressed size; refused as a likely zip bomb"#,
        ],
    );
}

#[test]
fn zip_bomb_with_lying_sizes_is_caught_while_decompressing() {
    // The same bomb, but its headers claim 100 bytes: only counting catches it.
    let bytes = native_pkg(&[E::File("bomb.bin", vec![0u8; 8 << 20])]);
    let c = *headers(&bytes, CENTRAL).last().unwrap();
    let mut bytes = bytes;
    bytes[c + 24..c + 28].copy_from_slice(&100u32.to_le_bytes()); // uncompressed size
    let l = *headers(&bytes, LOCAL).last().unwrap();
    bytes[l + 22..l + 26].copy_from_slice(&100u32.to_le_bytes());
    let archive = zip::ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
    assert_eq!(
        archive.by_index_data(archive.len() - 1).unwrap().size(),
        100,
        "the headers lie"
    );
    native(
        &bytes,
        &[
            r#"entry "bomb.bin" does not unpack to the 100 bytes its header declares; the zip headers are forged or damaged"#,
        ],
    );
}

#[test]
fn total_and_per_entry_sizes_are_counted_not_trusted() {
    // Incompressible data, so the ratio is not what trips.
    let noise = |n: usize, seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let limits = Limits {
        max_total_bytes: 100_000,
        max_entry_bytes: 60_000,
        ..Limits::default()
    };
    // Honest headers: refused without unpacking.
    let bytes = native_pkg(&[E::File("big.bin", noise(70_000, 1))]);
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &[r#"entry "big.bin" unpacks to more than 60000 bytes (the per-entry limit)"#],
    );
    let bytes = native_pkg(&[
        E::File("a.bin", noise(50_000, 2)),
        E::File("b.bin", noise(50_000, 3)),
    ]);
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &["entries unpack to more than 100000 bytes in total (the package limit)"],
    );

    // Lying headers (the big entries claim 10 bytes): unpacking stops at the declared size
    // and the lie is named.
    let lie = |bytes: Vec<u8>, last: usize| {
        let mut bytes = bytes;
        for c in headers(&bytes, CENTRAL).into_iter().rev().take(last) {
            bytes[c + 24..c + 28].copy_from_slice(&10u32.to_le_bytes());
        }
        for l in headers(&bytes, LOCAL).into_iter().rev().take(last) {
            bytes[l + 22..l + 26].copy_from_slice(&10u32.to_le_bytes());
        }
        bytes
    };
    let bytes = lie(native_pkg(&[E::File("big.bin", noise(70_000, 1))]), 1);
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &[
            r#"entry "big.bin" does not unpack to the 10 bytes its header declares; the zip headers are forged or damaged"#,
        ],
    );
    let bytes = lie(
        native_pkg(&[
            E::File("a.bin", noise(50_000, 2)),
            E::File("b.bin", noise(50_000, 3)),
        ]),
        2,
    );
    refused(
        &bytes,
        EngineKind::Native,
        &x64(),
        &limits,
        &[
            r#"entry "a.bin" does not unpack to the 10 bytes its header declares; the zip headers are forged or damaged"#,
            r#"entry "b.bin" does not unpack to the 10 bytes its header declares; the zip headers are forged or damaged"#,
        ],
    );
}

#[test]
fn xml_entity_attacks_in_the_nuspec_are_refused() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<package><metadata><id>&lol3;</id><version>1</version></metadata></package>"#;
    let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE package [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>
<package><metadata><id>&xxe;</id><version>1</version></metadata></package>"#;
    for xml in [laughs, xxe] {
        let bytes = zip(&[
            E::File("Echo.nuspec", xml.as_bytes().to_vec()),
            E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
        ]);
        native(
            &bytes,
            &[
                r#"nuspec "Echo.nuspec" has a DOCTYPE declaration; DTDs and entity declarations are refused"#,
            ],
        );
    }
    let bytes = zip(&[E::File("Echo.nuspec", b"\x00\x01 binary junk <<<".to_vec())]);
    native(
        &bytes,
        &[
            r#"nuspec "Echo.nuspec" is not well-formed XML: syntax error: tag not closed: `>` not found before end of input (near byte 15)"#,
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Extraction

#[test]
fn extraction_is_idempotent_and_leaves_no_temporary_folders() {
    let bytes = native_pkg(&[]);
    let limits = Limits::default();
    let info = package::inspect(&bytes, EngineKind::Native, &x64(), &limits).unwrap();
    let sandbox = Sandbox::new();
    let first = package::extract(&bytes, &info, &sandbox.root(), &limits).unwrap();
    let tree = sandbox.tree();
    let second = package::extract(&bytes, &info, &sandbox.root(), &limits).unwrap();
    assert_eq!(first, second);
    assert_eq!(sandbox.tree(), tree);
    assert!(tree.iter().all(|p| !p.contains(".tmp-")), "{tree:?}");
}

#[test]
fn concurrent_extractions_of_one_package_agree() {
    let bytes = zip(&[
        E::File("W.nuspec", nuspec("W", "")),
        E::File("lib/net8.0/W.dll", vec![1u8; 200_000]),
        E::File("lib/net8.0/A.dll", vec![2u8; 200_000]),
        E::File("lib/net8.0/B.dll", vec![3u8; 200_000]),
    ]);
    let limits = Limits::default();
    let info = package::inspect(&bytes, EngineKind::DotNet, &x64(), &limits).unwrap();
    let sandbox = Sandbox::new();
    let root = sandbox.root();
    let (tx, rx) = mpsc::channel();
    for _ in 0..8 {
        let (tx, bytes, info, root, limits) = (
            tx.clone(),
            bytes.clone(),
            info.clone(),
            root.clone(),
            limits.clone(),
        );
        std::thread::spawn(move || {
            let _ =
                tx.send(package::extract(&bytes, &info, &root, &limits).map_err(|e| e.to_string()));
        });
    }
    drop(tx);
    let mut dirs = BTreeSet::new();
    for _ in 0..8 {
        // Watchdog: a hang fails the test instead of stalling the suite.
        let result = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("an extraction hung");
        dirs.insert(result.unwrap());
    }
    assert_eq!(dirs.len(), 1);
    let dir = dirs.into_iter().next().unwrap();
    for (name, byte) in [("W.dll", 1u8), ("A.dll", 2), ("B.dll", 3)] {
        assert_eq!(
            std::fs::read(dir.join("lib/net8.0").join(name)).unwrap(),
            vec![byte; 200_000]
        );
    }
    let tree = sandbox.tree();
    assert!(tree.iter().all(|p| !p.contains(".tmp-")), "{tree:?}");
    assert_modes(&dir);
}

#[test]
fn one_package_extracted_for_both_engines_gains_both_sets_of_files() {
    let bytes = zip(&[
        E::File(
            "Echo.nuspec",
            nuspec("Echo", "<virtufinLibrary>echo</virtufinLibrary>"),
        ),
        E::File("runtimes/linux-x64/native/libecho.so", ELF.to_vec()),
        E::File("lib/net8.0/echo.dll", b"MZ".to_vec()),
    ]);
    let limits = Limits::default();
    let sandbox = Sandbox::new();
    let native = package::inspect(&bytes, EngineKind::Native, &x64(), &limits).unwrap();
    let dotnet = package::inspect(&bytes, EngineKind::DotNet, &x64(), &limits).unwrap();
    let a = package::extract(&bytes, &native, &sandbox.root(), &limits).unwrap();
    assert!(!a.join(&dotnet.library_path).exists());
    let b = package::extract(&bytes, &dotnet, &sandbox.root(), &limits).unwrap();
    assert_eq!(a, b);
    assert!(a.join(&native.library_path).is_file() && a.join(&dotnet.library_path).is_file());
    assert_modes(&a);
}

#[test]
fn extract_refuses_info_for_other_bytes_or_a_forged_path() {
    let limits = Limits::default();
    let bytes = native_pkg(&[]);
    let info = package::inspect(&bytes, EngineKind::Native, &x64(), &limits).unwrap();
    let other = native_pkg(&[E::File("extra", b"x".to_vec())]);
    let sandbox = Sandbox::new();
    let err = package::extract(&other, &info, &sandbox.root(), &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "package bytes have sha256 {}, but the package info is for {}; inspect these bytes first",
            package::sha256_hex(&other),
            info.sha256
        )
    );
    // A forged info pointing at a hostile entry: extract checks names itself and writes nothing.
    let hostile = native_pkg(&[E::File("../../evil.so", b"pwned".to_vec())]);
    let forged = PackageInfo {
        library_path: "../../evil.so".into(),
        sha256: package::sha256_hex(&hostile),
        ..info
    };
    let err = package::extract(&hostile, &forged, &sandbox.root(), &limits).unwrap_err();
    assert_eq!(
        err.problems()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![
            r#"entry "../../evil.so" cannot be read: the library is not in the package; inspect these bytes first"#
        ]
    );
    assert_eq!(sandbox.tree(), BTreeSet::new());
}

#[test]
fn a_file_in_the_way_of_the_extraction_folder_is_reported() {
    let limits = Limits::default();
    let bytes = native_pkg(&[]);
    let info = package::inspect(&bytes, EngineKind::Native, &x64(), &limits).unwrap();
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.root()).unwrap();
    let in_the_way = sandbox.root().join(&info.sha256);
    std::fs::write(&in_the_way, b"not a folder").unwrap();
    let err = package::extract(&bytes, &info, &sandbox.root(), &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot extract package {} into {}: adding files to the existing folder: the path exists and is not a folder; remove it and retry",
            info.sha256,
            in_the_way.display()
        )
    );
    // The temporary folder is gone; the file is untouched.
    let tree = sandbox.tree();
    assert_eq!(tree.len(), 2, "{tree:?}");
    assert_eq!(std::fs::read(&in_the_way).unwrap(), b"not a folder");
}
