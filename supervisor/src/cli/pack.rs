//! `workmanager pack` and `workmanager inspect`: worker packages without a daemon.
//!
//! `pack` writes the nuspec from flags (or takes the author's), lays the files out where the
//! engines look (`runtimes/<rid>/native/lib<library>.so`, `lib/<tfm>/...`), then runs the
//! daemon's own validation ([`wm_shared::package::inspect`]) for every RID in the package and
//! prints every problem at once; nothing is written unless the package passes.
//! `inspect` runs the same validation on an existing package and prints what would load.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;
use wm_shared::package::{self, EngineKind, Limits, PackageInfo, SUPPORTED_RIDS, Target};

use super::client::{CliError, exit};
use super::output::{Output, print_fields, print_json};

/// `workmanager pack`.
#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The package id (NuGet `<id>`); the library name defaults to it.
    #[arg(long)]
    pub id: Option<String>,
    /// The package version.
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// A native library, as `PATH` (for this machine's RID) or `RID=PATH` (repeat per RID).
    #[arg(long, value_name = "[RID=]PATH", conflicts_with = "dotnet")]
    pub native: Vec<String>,
    /// A .NET build output folder: its files go to `lib/<tfm>/`.
    #[arg(long, value_name = "DIR")]
    pub dotnet: Option<PathBuf>,
    /// The target framework folder for `--dotnet`.
    #[arg(long, default_value = "netcoreapp3.1")]
    pub tfm: String,
    /// `virtufinLibrary`: the library's base name (`echo` for `libecho.so` / `echo.dll`).
    #[arg(long)]
    pub library: Option<String>,
    /// `virtufinAbiVersion` (native).
    #[arg(long)]
    pub abi_version: Option<u32>,
    /// `virtufinEntryPoint` (native; default `Process`).
    #[arg(long)]
    pub entry_point: Option<String>,
    /// `virtufinFreeResult` (native; default `FreeResult`).
    #[arg(long)]
    pub free_result: Option<String>,
    /// NuGet `<authors>`.
    #[arg(long, default_value = "unknown")]
    pub authors: String,
    /// NuGet `<description>`.
    #[arg(long, default_value = "a workmanager worker")]
    pub description: String,
    /// Use this nuspec instead of writing one from the flags (its `<id>` names the package).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "library", "abi_version", "entry_point", "free_result"])]
    pub nuspec: Option<PathBuf>,
    /// Where to write the package (default `<id>.<version>.nupkg`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Sign the package with this minisign secret key (made by `minisign -G -W`): writes
    /// `<out>.minisig` next to it, for daemons with PACKAGE_TRUSTED_KEYS.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// `json` prints the package summary as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `workmanager inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The package file.
    pub package: PathBuf,
    /// The engine's MIME type; guessed from the layout when left out.
    #[arg(long, value_name = "MIME")]
    pub mime_type: Option<String>,
    /// Check for this RID instead of this machine's (native packages).
    #[arg(long)]
    pub rid: Option<String>,
    /// `json` prints the result as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Escapes text for XML element content.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The nuspec the flags describe.
fn nuspec_xml(a: &PackArgs, id: &str, library: Option<&str>) -> String {
    let mut extra = String::new();
    let mut el = |name: &str, value: &str| {
        extra.push_str(&format!("    <{name}>{}</{name}>\n", xml_escape(value)));
    };
    if let Some(v) = a.abi_version {
        el("virtufinAbiVersion", &v.to_string());
    }
    if let Some(l) = library.filter(|l| *l != id) {
        el("virtufinLibrary", l);
    }
    if let Some(e) = &a.entry_point {
        el("virtufinEntryPoint", e);
    }
    if let Some(f) = &a.free_result {
        el("virtufinFreeResult", f);
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<package xmlns=\"http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd\">\n  <metadata>\n    <id>{}</id>\n    <version>{}</version>\n    <authors>{}</authors>\n    <description>{}</description>\n{extra}  </metadata>\n</package>\n",
        xml_escape(id),
        xml_escape(&a.version),
        xml_escape(&a.authors),
        xml_escape(&a.description),
    )
}

/// `<id>` of an author's nuspec (the full rules run later, in `inspect`).
fn nuspec_id(xml: &str) -> Option<String> {
    let start = xml.find("<id>")? + 4;
    let end = start + xml[start..].find("</id>")?;
    Some(xml[start..end].trim().to_owned())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    super::workers::read_file(path, what)
}

/// `lib<name>.so` -> `name`.
fn library_of_so(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".so")?;
    Some(stem.strip_prefix("lib").unwrap_or(stem).to_owned())
}

/// Runs `workmanager pack`.
pub fn pack(a: PackArgs) -> Result<(), CliError> {
    let engine = match (a.native.is_empty(), &a.dotnet) {
        (false, None) => EngineKind::Native,
        (true, Some(_)) => EngineKind::DotNet,
        _ => {
            return Err(CliError::usage(
                "give the worker: --native [RID=]PATH to a lib<name>.so (repeat per RID) or --dotnet DIR (a .NET build output folder)",
            ));
        }
    };
    let this_rid = Target::current().rid;
    // (zip path, bytes) of the payload.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rids = Vec::new();
    let mut library = a.library.clone();
    match engine {
        EngineKind::Native => {
            for spec in &a.native {
                let (rid, path) = match spec.split_once('=') {
                    Some((rid, path)) if SUPPORTED_RIDS.contains(&rid) => {
                        (rid.to_owned(), PathBuf::from(path))
                    }
                    Some((rid, _)) if !rid.contains('/') => {
                        return Err(CliError::usage(format!(
                            "--native {spec}: RID '{rid}' is not supported; use one of {}",
                            SUPPORTED_RIDS.join(", ")
                        )));
                    }
                    _ => (this_rid.clone(), PathBuf::from(spec)),
                };
                let lib = match &library {
                    Some(l) => l.clone(),
                    None => {
                        let l = library_of_so(&path)
                            .or_else(|| a.id.clone())
                            .ok_or_else(|| {
                                CliError::usage(format!(
                                    "cannot tell the library name from {}; give --library NAME",
                                    path.display()
                                ))
                            })?;
                        library = Some(l.clone());
                        l
                    }
                };
                files.push((
                    format!("runtimes/{rid}/native/lib{lib}.so"),
                    read(&path, "native library")?,
                ));
                rids.push(rid);
            }
        }
        EngineKind::DotNet => {
            let dir = a.dotnet.as_deref().unwrap_or(Path::new("."));
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                let entries = std::fs::read_dir(&d).map_err(|e| {
                    CliError::new(
                        exit::NOT_FOUND,
                        format!("cannot read the folder {}: {e}", d.display()),
                    )
                })?;
                for entry in entries {
                    let entry = entry.map_err(|e| {
                        CliError::usage(format!("cannot list {}: {e}", d.display()))
                    })?;
                    let path = entry.path();
                    let ft = entry
                        .file_type()
                        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
                    if ft.is_dir() {
                        stack.push(path);
                    } else if ft.is_file() {
                        let rel = path.strip_prefix(dir).unwrap_or(&path);
                        let rel = rel.to_str().ok_or_else(|| {
                            CliError::usage(format!("{} is not a UTF-8 path", path.display()))
                        })?;
                        files.push((format!("lib/{}/{rel}", a.tfm), read(&path, "build output")?));
                    }
                    // Links are left out: the daemon refuses them in packages.
                }
            }
            files.sort_by(|x, y| x.0.cmp(&y.0));
        }
        // `engine` is chosen above from --native/--dotnet only.
        other => {
            return Err(CliError::usage(format!(
                "pack builds native and .NET packages; {other} code is deployed as it is"
            )));
        }
    }
    let (id, nuspec) = match &a.nuspec {
        Some(path) => {
            let bytes = read(path, "nuspec")?;
            let text = String::from_utf8_lossy(&bytes);
            let id = nuspec_id(&text).ok_or_else(|| {
                CliError::new(
                    exit::INVALID_PACKAGE,
                    format!(
                        "{} has no <id>; a nuspec needs <id> and <version>",
                        path.display()
                    ),
                )
            })?;
            (id, bytes)
        }
        None => {
            let id =
                a.id.clone()
                    .or_else(|| library.clone())
                    .ok_or_else(|| CliError::usage("give --id NAME (the package id)"))?;
            let xml = nuspec_xml(&a, &id, library.as_deref());
            (id, xml.into_bytes())
        }
    };
    let mut all = vec![(format!("{id}.nuspec"), nuspec)];
    all.extend(files);
    let bytes = zip_entries(&all)?;

    // The daemon's rules, for every RID in the package (native) or this runtime (.NET).
    let limits = Limits::default();
    let targets: Vec<Target> = match engine {
        EngineKind::Native => rids
            .iter()
            .map(|rid| Target {
                rid: rid.clone(),
                dotnet_major: None,
            })
            .collect(),
        EngineKind::DotNet => vec![Target::current()],
        other => {
            return Err(CliError::usage(format!(
                "pack builds native and .NET packages; {other} code is deployed as it is"
            )));
        }
    };
    let mut infos = Vec::new();
    for t in &targets {
        match package::inspect(&bytes, engine, t, &limits) {
            Ok(info) => infos.push(info),
            Err(e) => return Err(invalid(e)),
        }
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{id}.{}.nupkg", a.version)));
    // The key is read before anything is written: a bad key leaves no unsigned package.
    let key = match &a.sign_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read the key {}: {e}", path.display()))
            })?;
            Some(super::sign::SigningKey::parse(
                &text,
                &path.display().to_string(),
            )?)
        }
        None => None,
    };
    write_atomic(&out, &bytes)?;
    let signature_path = match &key {
        Some(key) => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut sig_path = out.clone().into_os_string();
            sig_path.push(".minisig");
            let sig_path = PathBuf::from(sig_path);
            std::fs::write(&sig_path, key.sign(&bytes, &name)).map_err(|e| {
                CliError::usage(format!("cannot write {}: {e}", sig_path.display()))
            })?;
            Some(sig_path)
        }
        None => None,
    };
    let info = &infos[0];
    if a.output == Output::Json {
        let mut v = info_json(info);
        v["signature"] = json!(signature_path.as_ref().map(|p| p.display().to_string()));
        v["path"] = json!(out.display().to_string());
        v["rids"] = json!(rids);
        print_json(&v);
    } else {
        eprintln!(
            "workmanager: wrote {} ({} bytes)",
            out.display(),
            bytes.len()
        );
        let mut fields = info_fields(info);
        if !rids.is_empty() {
            fields.push(("rids", rids.join(", ")));
        }
        if let Some(p) = &signature_path {
            fields.push(("signature", p.display().to_string()));
        }
        print_fields(&fields);
    }
    Ok(())
}

fn zip_entries(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>, CliError> {
    let err = |e: &dyn std::fmt::Display| {
        CliError::new(exit::FAILED, format!("cannot build the zip: {e}"))
    };
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, bytes) in entries {
        zw.start_file(name.as_str(), opts).map_err(|e| err(&e))?;
        zw.write_all(bytes).map_err(|e| err(&e))?;
    }
    Ok(zw.finish().map_err(|e| err(&e))?.into_inner())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let tmp = path.with_extension("nupkg.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::usage(format!("cannot write {}: {e}", path.display()))
        })
}

/// A validation failure with every problem listed.
pub fn invalid(e: package::PackageError) -> CliError {
    let problems: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
    if problems.is_empty() {
        return CliError::new(exit::INVALID_PACKAGE, e.to_string());
    }
    CliError {
        message: format!(
            "invalid worker package ({} problem{}); the daemon would refuse it:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        ),
        code: exit::INVALID_PACKAGE,
        details: problems,
    }
}

fn info_json(i: &PackageInfo) -> serde_json::Value {
    json!({
        "id": i.id,
        "version": i.version,
        "mimeType": i.engine.mime(),
        "library": i.library,
        "libraryPath": i.library_path,
        "abiVersion": i.abi_version,
        "entryPoint": i.entry_point,
        "freeResult": i.free_result,
        "rid": i.rid,
        "tfm": i.tfm,
        "sha256": i.sha256,
        "size": i.size,
    })
}

fn info_fields(i: &PackageInfo) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", i.id.clone()),
        ("version", i.version.clone()),
        ("mimeType", i.engine.mime().to_owned()),
        ("library", i.library.clone()),
        ("loads", i.library_path.clone()),
    ];
    if i.engine == EngineKind::Native {
        fields.push(("abiVersion", i.abi_version.to_string()));
        fields.push(("entryPoint", i.entry_point.clone()));
        fields.push(("freeResult", i.free_result.clone()));
    }
    fields.push(("sha256", i.sha256.clone()));
    fields.push(("size", i.size.to_string()));
    fields
}

fn print_info(i: &PackageInfo) {
    print_fields(&info_fields(i));
}

/// Runs `workmanager inspect`.
pub fn inspect(a: InspectArgs) -> Result<(), CliError> {
    let bytes = read(&a.package, "package")?;
    let engine = match &a.mime_type {
        Some(m) => EngineKind::from_mime(m).ok_or_else(|| {
            CliError::usage(format!(
                "no engine for MIME type '{m}'; use application/x-native-dll or application/x-dotnet-dll"
            ))
        })?,
        None => guess_engine(&bytes),
    };
    let mut target = Target::current();
    if let Some(rid) = &a.rid {
        target.rid = rid.clone();
    }
    let info = package::inspect(&bytes, engine, &target, &Limits::default()).map_err(invalid)?;
    if engine == EngineKind::Python {
        python_imports(&bytes)?;
    }
    if a.output == Output::Json {
        print_json(&info_json(&info));
    } else {
        print_info(&info);
    }
    Ok(())
}

/// The daemon's import check of `text/x-python` source (`PYTHON_BLOCKED_MODULES` from the
/// environment or its default), so `inspect` refuses what a create would.
fn python_imports(source: &[u8]) -> Result<(), CliError> {
    let config = crate::config::Config::load(&crate::config::ServeArgs::default())
        .map_err(|e| CliError::usage(format!("{e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(exit::FAILED, format!("cannot start the async runtime: {e}")))?;
    let problems = rt
        .block_on(crate::python_policy::check(
            source,
            &config.python_blocked_modules,
        ))
        .map_err(|e| CliError::new(exit::FAILED, e.to_string()))?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(invalid(package::PackageError::Invalid {
        problems: problems
            .into_iter()
            .map(package::Problem::PythonSource)
            .collect(),
    }))
}

/// The engine a package's layout suggests: `.so` files under `native/` for the native
/// engine, `lib/*.dll` for .NET; `None` when it has both or neither.
pub fn layout_engine(bytes: &[u8]) -> Option<EngineKind> {
    let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(Result::ok)
        .map(|n| n.into_owned())
        .collect();
    let native = names
        .iter()
        .any(|n| n.ends_with(".so") && n.contains("native/"));
    let dotnet = names
        .iter()
        .any(|n| n.starts_with("lib/") && n.ends_with(".dll"));
    match (native, dotnet) {
        (true, false) => Some(EngineKind::Native),
        (false, true) => Some(EngineKind::DotNet),
        _ => None,
    }
}

/// [`layout_engine`], native when the layout does not tell.
pub fn guess_engine(bytes: &[u8]) -> EngineKind {
    layout_engine(bytes).unwrap_or(EngineKind::Native)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_xml() {
        assert_eq!(
            library_of_so(Path::new("/x/libecho.so")).as_deref(),
            Some("echo")
        );
        assert_eq!(library_of_so(Path::new("echo.so")).as_deref(), Some("echo"));
        assert_eq!(library_of_so(Path::new("echo.dll")), None);
        assert_eq!(
            nuspec_id("<package><metadata><id> A.b </id>").as_deref(),
            Some("A.b")
        );
        assert_eq!(xml_escape("a<&>"), "a&lt;&amp;&gt;");
    }
}
