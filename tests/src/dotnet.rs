//! Builds the .NET side for tests: the engine bridge + DevKit (through
//! `host-runner/dotnet/build.sh`) and C# fixture workers (mono `mcs` against the .NET Core 3.1
//! reference pack), and packs workers as `.nupkg` (`lib/netcoreapp3.1/<id>.dll` + siblings).
//!
//! Everything is cached: the bridge by the script's own source hash, fixtures under
//! `target/fixtures/dotnet/<key>/` keyed by their sources, references and the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::nupkg::Nupkg;
use crate::{bin_dir, content_key, fixtures_out, fixtures_src, with_dir_lock, workspace_root};

/// The target framework folder fixture packages use.
pub const TFM: &str = "netcoreapp3.1";

/// `$DOTNET_ROOT`, else `<repo>/.tools/dotnet` (filled by scripts/install-deps.sh).
pub fn dotnet_root() -> PathBuf {
    match std::env::var_os("DOTNET_ROOT") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => workspace_root().join(".tools").join("dotnet"),
    }
}

/// The reference pack fixtures compile against.
pub fn reference_pack() -> PathBuf {
    dotnet_root().join("packs/Microsoft.NETCore.App.Ref/3.1.0/ref/netcoreapp3.1")
}

/// Builds the bridge and DevKit into `<bin dir>/dotnet/` (next to the host-runner binary, where
/// it looks for them) once per test process; returns that directory.
pub fn engine_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = bin_dir().join("dotnet");
        let script = workspace_root().join("host-runner/dotnet/build.sh");
        with_dir_lock(&out, || {
            let st = Command::new("bash")
                .arg(&script)
                .arg(&out)
                .env("DOTNET_ROOT", dotnet_root())
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(st.success(), "{} failed ({st})", script.display());
        });
        out
    })
    .clone()
}

/// The 1.x DevKit (`devkit-v1/Virtufin.Worker.DevKit.dll`, its own `CloudEvent` type), which
/// the fixtures built by [`build_library`] compile against: they are the workers written before
/// the 2.x DevKit, and prove the host still runs them.
pub fn devkit_dll() -> PathBuf {
    engine_dir().join("devkit-v1/Virtufin.Worker.DevKit.dll")
}

/// The 2.x DevKit and `CloudNative.CloudEvents` (the original's worker surface).
pub fn devkit2_dlls() -> [PathBuf; 2] {
    let dir = engine_dir();
    [
        dir.join("CloudNative.CloudEvents.dll"),
        dir.join("Virtufin.Worker.DevKit.dll"),
    ]
}

/// Compiles `sources` (relative to `tests/fixtures/dotnet/`) into `<name>.dll` referencing the
/// reference pack, the 1.x DevKit and `refs`; cached by content. Returns the dll path.
pub fn build_library(name: &str, sources: &[&str], refs: &[&Path]) -> PathBuf {
    build(name, sources, refs, Some(&[devkit_dll()]))
}

/// As [`build_library`] against the 2.x DevKit and `CloudNative.CloudEvents` (a worker
/// written from the original DevKit's documentation).
pub fn build_library_v2(name: &str, sources: &[&str], refs: &[&Path]) -> PathBuf {
    build(name, sources, refs, Some(&devkit2_dlls()))
}

/// As [`build_library`] but without the DevKit reference (for assemblies that stand in for it).
pub fn build_library_without_devkit(name: &str, sources: &[&str], refs: &[&Path]) -> PathBuf {
    build(name, sources, refs, None)
}

fn build(name: &str, sources: &[&str], refs: &[&Path], devkit: Option<&[PathBuf]>) -> PathBuf {
    let src_dir = fixtures_src("dotnet");
    let mut all_refs: Vec<PathBuf> = refs.iter().map(|p| p.to_path_buf()).collect();
    if let Some(devkit) = devkit {
        all_refs.extend(devkit.iter().cloned());
    }
    // Bump the tag when the way fixtures are built changes.
    let mut parts: Vec<Vec<u8>> = vec![b"mcs-v2".to_vec(), name.as_bytes().to_vec()];
    for s in sources {
        let p = src_dir.join(s);
        parts.push(std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())));
    }
    for r in &all_refs {
        parts.push(std::fs::read(r).unwrap_or_else(|e| panic!("reading {}: {e}", r.display())));
    }
    let mcs_version = Command::new("mcs")
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_else(|e| panic!("mcs not found ({e}): run scripts/install-deps.sh (mono-mcs)"));
    parts.push(mcs_version);
    let key = content_key(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let out_dir = fixtures_out("dotnet").join(&key);
    let dll = out_dir.join(format!("{name}.dll"));
    with_dir_lock(&fixtures_out("dotnet"), || {
        if dll.is_file() {
            return;
        }
        std::fs::create_dir_all(&out_dir).unwrap();
        let refpack = reference_pack();
        let mut cmd = Command::new("mcs");
        cmd.args([
            "-nostdlib",
            "-target:library",
            "-unsafe",
            "-nowarn:1702",
            "-debug-",
        ]);
        // mcs names the assembly after the output file: build under the final name in a
        // scratch directory, then move it into place.
        let scratch = out_dir.join("partial");
        std::fs::create_dir_all(&scratch).unwrap();
        cmd.arg(format!(
            "-out:{}",
            scratch.join(format!("{name}.dll")).display()
        ));
        let rd = std::fs::read_dir(&refpack).unwrap_or_else(|e| {
            panic!(
                "no reference pack at {} ({e}): run scripts/install-deps.sh",
                refpack.display()
            )
        });
        let mut pack: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "dll"))
            .collect();
        pack.sort();
        for r in pack.iter().chain(all_refs.iter()) {
            cmd.arg(format!("-r:{}", r.display()));
        }
        for s in sources {
            cmd.arg(src_dir.join(s));
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("running mcs: {e}"));
        assert!(
            out.status.success(),
            "mcs failed for {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(scratch.join(format!("{name}.dll")), &dll).unwrap();
    });
    dll
}

/// A .NET worker package: nuspec (`<virtufinLibrary>` = `id`), `lib/netcoreapp3.1/<id>.dll`
/// and the given sibling DLLs under their own file names.
pub fn worker_nupkg(id: &str, dll: &Path, siblings: &[&Path]) -> Vec<u8> {
    let mut p = Nupkg::new()
        .nuspec(
            id,
            "0.0.1",
            &format!("<virtufinLibrary>{id}</virtufinLibrary>"),
        )
        .file_from(&format!("lib/{TFM}/{id}.dll"), dll);
    for s in siblings {
        let name = s
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("sibling.dll");
        p = p.file_from(&format!("lib/{TFM}/{name}"), s);
    }
    p.build()
}

/// Extracts a package into `dir` (as the supervisor does before a LoadWorker); returns the
/// path of the worker dll relative to `dir`.
pub fn extract(nupkg: &[u8], id: &str, dir: &Path) -> String {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(nupkg)).unwrap();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let Some(rel) = f.enclosed_name() else {
            panic!("unsafe entry name in fixture package")
        };
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut f, &mut out).unwrap();
    }
    format!("lib/{TFM}/{id}.dll")
}
