//! Worker packages (`.nupkg`, a zip): read, validate and extract them for both engines.
//!
//! # Brief overview
//! A package arrives as untrusted bytes over the REST API. [`inspect`] validates everything and
//! writes nothing; it returns a [`PackageInfo`] (what to load, from which path inside the
//! package) or a [`PackageError`] listing *every* problem found, so an author fixes them in one
//! go (ripgrep's `ignore::Error::Partial` idea). [`extract`] then writes only the entries the
//! engine needs into a content-addressed directory `<root>/<sha256 of the package>/`.
//!
//! - `nupkg`: the zip walk; hostile-archive checks (names, links, sizes counted while
//!   decompressing, ratios, duplicates, encryption).
//! - `nuspec`: the `.nuspec` manifest (XML, DTDs refused) and the `virtufin*` metadata rules.
//! - `validate`: the engine layouts: `runtimes/<rid>/native/lib<library>.so` for
//!   [`EngineKind::Native`], `lib/<tfm>/<library>.dll` for [`EngineKind::DotNet`].
//! - `extract`: atomic, idempotent extraction.
//!
//! # Example
//! ```no_run
//! use wm_shared::package::{self, EngineKind, Limits, Target};
//! # fn demo(bytes: &[u8]) -> Result<(), package::PackageError> {
//! let limits = Limits::default();
//! let info = package::inspect(bytes, EngineKind::Native, &Target::current(), &limits)?;
//! let dir = package::extract(bytes, &info, std::path::Path::new("/var/lib/wm/code"), &limits)?;
//! let library = dir.join(&info.library_path);
//! # let _ = library; Ok(()) }
//! ```

pub mod csharp_source;
mod extract;
mod nupkg;
mod nuspec;
pub mod python_source;
pub mod python_wheel;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use extract::extract;

/// The ABI versions of the native C ABI this build supports (`virtufinAbiVersion`).
pub const SUPPORTED_ABI_VERSIONS: &[u32] = &[1];

/// The runtime identifiers native workers may target (v1 of the Virtufin spec).
pub const SUPPORTED_RIDS: &[&str] = &["linux-x64", "linux-arm64"];

/// Which engine a package is for, named by the MIME type of the REST API's `mimeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// `application/x-native-dll`: a C ABI shared library in `runtimes/<rid>/native/`.
    Native,
    /// `application/x-dotnet-dll`: a .NET assembly in `lib/<tfm>/`.
    DotNet,
    /// `text/x-csharp`: one UTF-8 C# source file, compiled by a .NET host ([`csharp_source`]).
    CSharpSource,
    /// `text/x-python`: Python source with a module-level `Process(event)`, run by the
    /// host-runner's embedded CPython (see [`python_source`]).
    Python,
    /// `application/x-python`: a wheel with `worker.py` and its `Requires-Dist` (see
    /// [`python_wheel`]); runs on the same python hosts.
    PythonWheel,
}

impl EngineKind {
    /// The engine for a MIME type (ASCII case-insensitive), or `None` for an unknown one.
    pub fn from_mime(mime: &str) -> Option<EngineKind> {
        let mime = mime.trim();
        if mime.eq_ignore_ascii_case("application/x-native-dll") {
            Some(EngineKind::Native)
        } else if mime.eq_ignore_ascii_case("application/x-dotnet-dll") {
            Some(EngineKind::DotNet)
        } else if mime.eq_ignore_ascii_case("text/x-csharp") {
            Some(EngineKind::CSharpSource)
        } else if mime.eq_ignore_ascii_case("text/x-python") {
            Some(EngineKind::Python)
        } else if mime.eq_ignore_ascii_case("application/x-python") {
            Some(EngineKind::PythonWheel)
        } else {
            None
        }
    }

    /// The engine's MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            EngineKind::Native => "application/x-native-dll",
            EngineKind::DotNet => "application/x-dotnet-dll",
            EngineKind::CSharpSource => "text/x-csharp",
            EngineKind::Python => "text/x-python",
            EngineKind::PythonWheel => "application/x-python",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// Caps on what a package may cost us to read. Sizes are counted while decompressing; the
/// sizes a zip header declares are only used to refuse early, never trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The package file itself. 256 MiB: a .NET worker with its dependencies is a few MiB, a
    /// native one less; this leaves room for fat debug builds while bounding one upload.
    pub max_package_bytes: u64,
    /// Zip entries (files and folders). 10 000: real packages hold tens; this bounds the work
    /// per package and the memory the central directory costs.
    pub max_entries: usize,
    /// Uncompressed bytes of one entry. 256 MiB, the same as the package: a stored entry
    /// cannot be larger than the package anyway.
    pub max_entry_bytes: u64,
    /// Uncompressed bytes of all entries together. 1 GiB: four times the largest package, so
    /// compressible but honest packages pass, while a bomb stops after a bounded amount of work.
    pub max_total_bytes: u64,
    /// Uncompressed size / compressed size of an entry larger than 1 MiB. 200: machine code
    /// and IL compress 2-10 times, sparse data up to ~100; deflate tops out near 1032, so an
    /// entry past 200 is almost certainly built to explode.
    pub max_ratio: u64,
    /// The `.nuspec` manifest. 1 MiB: real ones are a few KiB; the XML parser holds it whole.
    pub max_nuspec_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_package_bytes: 256 << 20,
            max_entries: 10_000,
            max_entry_bytes: 256 << 20,
            max_total_bytes: 1 << 30,
            max_ratio: 200,
            max_nuspec_bytes: 1 << 20,
        }
    }
}

/// The machine a package must run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The .NET runtime identifier of this machine for native workers (`linux-x64`,
    /// `linux-arm64`).
    pub rid: String,
    /// The major version of the .NET runtime that will host .NET workers (3 for
    /// netcoreapp3.1, 8 for net8.0), or `None` when it is not known (no runtime found): then
    /// the highest framework in the package is chosen and the load reports the missing runtime.
    pub dotnet_major: Option<u32>,
}

impl Target {
    /// This machine: the RID from [`std::env::consts::ARCH`] and the major of the framework
    /// the .NET engine's bridge runs on (see [`crate::dotnet::DotNetRuntime::bridge_framework`]).
    pub fn current() -> Target {
        // The same search the .NET engine does, and the framework major its bridge will run
        // on (`rollForward: Major` takes the lowest compatible major, not the newest): a
        // package's `lib/<tfm>/` must be loadable by that runtime.
        let dotnet_major = crate::dotnet::RuntimeSearch::from_env()
            .find()
            .ok()
            .and_then(|rt| rt.bridge_framework().map(|v| v.major));
        Target {
            rid: rid_for_arch(std::env::consts::ARCH),
            dotnet_major,
        }
    }
}

/// The linux RID for a Rust target architecture name (`x86_64` -> `linux-x64`).
pub fn rid_for_arch(arch: &str) -> String {
    match arch {
        "x86_64" => "linux-x64".to_string(),
        "aarch64" => "linux-arm64".to_string(),
        other => format!("linux-{other}"),
    }
}

/// The highest major version of `Microsoft.NETCore.App` installed under a .NET root
/// (`<root>/shared/Microsoft.NETCore.App/<x.y.z>/`), if any.
pub fn dotnet_major_in(root: &Path) -> Option<u32> {
    let dir = root.join("shared").join("Microsoft.NETCore.App");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.split('.').next()?.parse::<u32>().ok()
        })
        .max()
}

/// What [`inspect`] learned about a valid package: everything an engine needs to load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// NuGet `<id>`.
    pub id: String,
    /// NuGet `<version>` (informational).
    pub version: String,
    /// `virtufinAbiVersion` (1 for .NET packages, whose engine ignores it).
    pub abi_version: u32,
    /// `virtufinLibrary`, defaulting to `<id>`: the library basename.
    pub library: String,
    /// `virtufinEntryPoint` (`Process` unless set; the default for .NET packages).
    pub entry_point: String,
    /// `virtufinFreeResult` (`FreeResult` unless set; the default for .NET packages).
    pub free_result: String,
    /// The engine the package was validated for.
    pub engine: EngineKind,
    /// The library's path inside the package, `/`-separated; after [`extract`] it is at
    /// `<extracted dir>/<library_path>`.
    pub library_path: String,
    /// The RID folder chosen (native packages).
    pub rid: Option<String>,
    /// The `lib/<tfm>/` folder chosen, as spelled in the package (.NET packages).
    pub tfm: Option<String>,
    /// Lower-case hex sha256 of the package bytes: the code's content address.
    pub sha256: String,
    /// Package size in bytes.
    pub size: u64,
    /// Deviations that were accepted but should be fixed (e.g. the seed's native layout
    /// without `runtimes/`); the daemon logs them and returns them from create.
    pub warnings: Vec<String>,
}

/// The package could not be used. `Invalid` lists every problem found in one go.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The package breaks one or more rules; each is listed on its own line.
    #[error("{}", ProblemList(.problems))]
    Invalid {
        /// Every problem found, in the order: archive, nuspec, engine layout.
        problems: Vec<Problem>,
    },
    /// [`extract`] was given a [`PackageInfo`] that [`inspect`] did not produce for these bytes.
    #[error(
        "package bytes have sha256 {actual}, but the package info is for {expected}; inspect these bytes first"
    )]
    InfoMismatch {
        /// The sha256 in the [`PackageInfo`].
        expected: String,
        /// The sha256 of the bytes given.
        actual: String,
    },
    /// Writing the extracted files failed.
    #[error("cannot extract package {sha256} into {}: {step}: {source}", .path.display())]
    Io {
        /// The package's sha256.
        sha256: String,
        /// The file or folder being written.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl PackageError {
    /// The problems of an `Invalid` package (empty for the other variants).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PackageError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid worker package ({n} problem{}); fix every one and upload again:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.0 {
            write!(f, "\n- {p}")?;
        }
        Ok(())
    }
}

/// Why a zip entry's name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameIssue {
    /// The raw name bytes are not UTF-8.
    NotUtf8,
    /// The name is empty or names nothing (`./`).
    Empty,
    /// NUL, newline or another control character.
    ControlCharacter,
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    ParentComponent,
    /// Contains `\`, a Windows separator that could hide a `..`.
    Backslash,
    /// Starts with `C:` and the like.
    DriveLetter,
    /// More folders deep than [`MAX_PATH_DEPTH`].
    TooDeep(usize),
    /// Longer than [`MAX_NAME_BYTES`].
    TooLong(usize),
    /// One component is longer than 255 bytes (Linux `NAME_MAX`).
    ComponentTooLong,
}

/// The deepest folder nesting accepted in entry names.
pub const MAX_PATH_DEPTH: usize = 32;
/// The longest entry name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

impl fmt::Display for NameIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameIssue::NotUtf8 => f.write_str("is not valid UTF-8"),
            NameIssue::Empty => f.write_str("names no file"),
            NameIssue::ControlCharacter => f.write_str("contains a control character"),
            NameIssue::Absolute => f.write_str("is an absolute path"),
            NameIssue::ParentComponent => {
                f.write_str("has a '..' component, which would point outside the package")
            }
            NameIssue::Backslash => f.write_str("contains a backslash; zip paths use '/'"),
            NameIssue::DriveLetter => f.write_str("starts with a drive letter"),
            NameIssue::TooDeep(d) => {
                write!(
                    f,
                    "is nested {d} folders deep, over the limit of {MAX_PATH_DEPTH}"
                )
            }
            NameIssue::TooLong(n) => {
                write!(f, "is {n} bytes long, over the limit of {MAX_NAME_BYTES}")
            }
            NameIssue::ComponentTooLong => f.write_str("has a path component over 255 bytes"),
        }
    }
}

/// One rule a package breaks. The message says what is wrong and with which entry or element.
///
/// Fields: `name` is an entry name as written in the zip (lossily decoded when it is not
/// UTF-8; messages print it quoted and escaped, so a hostile name cannot forge a line),
/// `limit` the [`Limits`] value crossed, `value` the offending text from the nuspec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    // ---- the archive ----
    /// The package is over [`Limits::max_package_bytes`].
    #[error("package is {size} bytes, over the limit of {limit} bytes")]
    PackageTooLarge { size: u64, limit: u64 },
    /// Source code (not a package) that cannot be used as text.
    #[error("{reason}")]
    Source { reason: String },
    /// Not a zip file (or a damaged one).
    #[error("package is not a readable zip archive ({reason}); a .nupkg must be a zip file")]
    NotZip { reason: String },
    /// More entries than [`Limits::max_entries`].
    #[error("package has {count} entries, over the limit of {limit}")]
    TooManyEntries { count: u64, limit: usize },
    /// An entry name that could escape the extraction folder or is otherwise unusable.
    #[error("entry {name:?} {issue}")]
    UnsafeName { name: String, issue: NameIssue },
    /// A symbolic link entry.
    #[error(
        "entry {name:?} is a symbolic link; packages may contain only regular files and folders"
    )]
    Symlink { name: String },
    /// A FIFO, device or socket entry.
    #[error(
        "entry {name:?} is a special file (mode {mode:o}); packages may contain only regular files and folders"
    )]
    SpecialFile { name: String, mode: u32 },
    /// An encrypted entry.
    #[error("entry {name:?} is encrypted; packages must not be encrypted")]
    Encrypted { name: String },
    /// A compression method other than stored or deflate.
    #[error(
        "entry {name:?} uses compression method {method}; only stored and deflate are supported"
    )]
    UnsupportedCompression { name: String, method: String },
    /// The same name more than once in the central directory.
    #[error("entry {name:?} appears {count} times")]
    DuplicateName { name: String, count: usize },
    /// Two names that become the same file after case folding and normalisation.
    #[error(
        "entries {first:?} and {second:?} name the same file (names must differ after case folding and normalisation)"
    )]
    CollidingNames { first: String, second: String },
    /// An entry whose parent folder is a file entry.
    #[error("entry {name:?} is inside {file:?}, which is a file")]
    InsideFile { name: String, file: String },
    /// One entry unpacks to more than [`Limits::max_entry_bytes`].
    #[error("entry {name:?} unpacks to more than {limit} bytes (the per-entry limit)")]
    EntryTooLarge { name: String, limit: u64 },
    /// All entries together unpack to more than [`Limits::max_total_bytes`].
    #[error("entries unpack to more than {limit} bytes in total (the package limit)")]
    TotalTooLarge { limit: u64 },
    /// An entry expands more than [`Limits::max_ratio`] times.
    #[error(
        "entry {name:?} expands more than {limit} times its compressed size; refused as a likely zip bomb"
    )]
    RatioTooHigh { name: String, limit: u64 },
    /// An entry that unpacks to more bytes than its header declares: the headers lie.
    #[error(
        "entry {name:?} does not unpack to the {declared} bytes its header declares; the zip headers are forged or damaged"
    )]
    SizeMismatch { name: String, declared: u64 },
    /// An entry that cannot be decompressed (bad data, CRC mismatch).
    #[error("entry {name:?} cannot be read: {reason}")]
    CorruptEntry { name: String, reason: String },

    // ---- the nuspec ----
    /// No `.nuspec` at the root.
    #[error("no .nuspec file at the package root{}", nested_hint(.nested))]
    NoNuspec { nested: Vec<String> },
    /// More than one `.nuspec` at the root.
    #[error("more than one .nuspec file at the package root ({}); keep exactly one", quoted(.names))]
    MultipleNuspecs { names: Vec<String> },
    /// The nuspec is over [`Limits::max_nuspec_bytes`].
    #[error("nuspec {name:?} is over the limit of {limit} bytes")]
    NuspecTooLarge { name: String, limit: u64 },
    /// The nuspec is not UTF-8.
    #[error("nuspec {name:?} is not UTF-8 text")]
    NuspecNotUtf8 { name: String },
    /// The nuspec is not well-formed XML.
    #[error("nuspec {name:?} is not well-formed XML: {reason}")]
    NuspecNotXml { name: String, reason: String },
    /// The nuspec has a DOCTYPE (refused outright: entity expansion, external entities).
    #[error("nuspec {name:?} has a DOCTYPE declaration; DTDs and entity declarations are refused")]
    NuspecDoctype { name: String },
    /// The nuspec uses an entity that is not one of XML's five.
    #[error("nuspec {name:?} uses the undefined entity '&{entity};'")]
    NuspecEntity { name: String, entity: String },
    /// The root element is not `<package>`.
    #[error("nuspec {name:?} has the root element <{found}>; expected <package>")]
    NuspecRoot { name: String, found: String },
    /// The root element is in a namespace that is not a NuGet nuspec namespace.
    #[error(
        "nuspec {name:?} uses the namespace {namespace:?}, which is not a NuGet nuspec namespace"
    )]
    NuspecNamespace { name: String, namespace: String },
    /// No `<metadata>` under `<package>`.
    #[error("nuspec {name:?} has no <metadata> element")]
    NoMetadata { name: String },
    /// `<id>` or `<version>` missing or empty.
    #[error("nuspec <metadata> has no <{element}>, which is required")]
    MissingElement { element: &'static str },
    /// An element we read appears twice.
    #[error("nuspec <metadata> has more than one <{element}>")]
    RepeatedElement { element: &'static str },
    /// `virtufinAbiVersion` is not an integer.
    #[error("virtufinAbiVersion {value:?} is not an integer")]
    AbiNotInteger { value: String },
    /// `virtufinAbiVersion` is an ABI this build does not speak.
    #[error(
        "virtufinAbiVersion {value} is not supported; supported versions: {}",
        supported_abis()
    )]
    AbiUnsupported { value: String },
    /// `virtufinLibrary` (or the `<id>` it defaults to) is not a safe basename.
    #[error("{} {value:?} {why}", library_source(*.from_id))]
    BadLibrary {
        value: String,
        from_id: bool,
        why: &'static str,
    },
    /// `virtufinEntryPoint` or `virtufinFreeResult` is not a C identifier.
    #[error(
        "{element} {value:?} is not a valid C identifier (letters, digits and '_', not starting with a digit)"
    )]
    BadSymbol {
        element: &'static str,
        value: String,
    },

    // ---- the engine layout ----
    /// This host's RID is not one native workers support.
    #[error("this host's runtime identifier {rid:?} is not supported; native workers run on {}", SUPPORTED_RIDS.join(", "))]
    UnsupportedRid { rid: String },
    /// No native library for this host's RID.
    #[error("no native library for {rid}: expected {expected:?}; {}", rid_hint(.rids, .present))]
    MissingNativeLibrary {
        rid: String,
        expected: String,
        rids: Vec<String>,
        present: Vec<String>,
    },
    /// No `lib/<tfm>/` folder.
    #[error("no lib/<tfm>/ folder with files; a .NET worker ships lib/<tfm>/<library>.dll")]
    NoLibFolder,
    /// No `lib/<tfm>/` folder the host's runtime can run.
    #[error("no lib/<tfm>/ folder that {} can run; the package has: {}", runtime_name(*.runtime_major), .tfms.join(", "))]
    NoCompatibleFramework {
        runtime_major: Option<u32>,
        tfms: Vec<String>,
    },
    /// The chosen folder has no `<library>.dll`.
    #[error("{folder} has no {library}.dll (virtufinLibrary must equal the worker DLL's basename); {}", dll_hint(.dlls))]
    MissingDll {
        folder: String,
        library: String,
        dlls: Vec<String>,
    },

    // ---- Python source (`text/x-python`) ----
    /// The source breaks a rule (encoding, NUL byte, no `Process`); the text says which.
    #[error("{0}")]
    PythonSource(String),
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nested_hint(nested: &[String]) -> String {
    if nested.is_empty() {
        String::new()
    } else {
        format!(
            "; found {} in a subfolder, move it to the root",
            quoted(nested)
        )
    }
}

fn supported_abis() -> String {
    SUPPORTED_ABI_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn library_source(from_id: bool) -> &'static str {
    if from_id {
        "the library name (taken from <id>; set <virtufinLibrary> to override)"
    } else {
        "virtufinLibrary"
    }
}

fn rid_hint(rids: &[String], present: &[String]) -> String {
    let mut s = if rids.is_empty() {
        "the package has no runtimes/<rid>/native/ folder".to_string()
    } else {
        format!("the package has native libraries for: {}", rids.join(", "))
    };
    if !present.is_empty() {
        s.push_str(&format!(
            "; the folder for this RID holds {}",
            quoted(present)
        ));
    }
    s
}

fn runtime_name(major: Option<u32>) -> String {
    match major {
        Some(m) => format!("this host's .NET {m} runtime"),
        None => "a .NET runtime".to_string(),
    }
}

fn dll_hint(dlls: &[String]) -> String {
    if dlls.is_empty() {
        "the folder has no DLLs".to_string()
    } else {
        format!("its DLLs: {}", dlls.join(", "))
    }
}

/// Validates a package for `engine` on `target` without writing anything.
///
/// Returns every problem at once in [`PackageError::Invalid`]. Only three problems stop the
/// check early, because nothing after them can be read safely: the package over its size
/// limit, bytes that are not a zip, and more entries than [`Limits::max_entries`].
pub fn inspect(
    bytes: &[u8],
    engine: EngineKind,
    target: &Target,
    limits: &Limits,
) -> Result<PackageInfo, PackageError> {
    if engine == EngineKind::CSharpSource {
        return csharp_source::inspect(bytes, limits);
    }
    if engine == EngineKind::Python {
        return python_source::inspect(bytes, limits);
    }
    if engine == EngineKind::PythonWheel {
        return python_wheel::inspect(bytes, limits);
    }
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

    let nuspec = nuspec::check(&scan, engine, &mut problems);
    let layout = match &nuspec {
        Some(meta) => validate::layout(&scan, engine, target, &meta.library, &mut problems),
        None => None,
    };

    match (nuspec, layout) {
        (Some(meta), Some(layout)) if problems.is_empty() => Ok(PackageInfo {
            id: meta.id,
            version: meta.version,
            abi_version: meta.abi_version,
            library: meta.library,
            entry_point: meta.entry_point,
            free_result: meta.free_result,
            engine,
            library_path: layout.library_path,
            rid: layout.rid,
            tfm: layout.tfm,
            sha256: sha256_hex(bytes),
            size,
            warnings: layout.warnings,
        }),
        _ => Err(PackageError::Invalid { problems }),
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_map_to_and_from_mime_types() {
        for engine in [
            EngineKind::Native,
            EngineKind::DotNet,
            EngineKind::CSharpSource,
            EngineKind::Python,
            EngineKind::PythonWheel,
        ] {
            assert_eq!(EngineKind::from_mime(engine.mime()), Some(engine));
        }
        assert_eq!(
            EngineKind::from_mime(" Application/X-Native-DLL "),
            Some(EngineKind::Native)
        );
        assert_eq!(EngineKind::from_mime("text/x-ruby"), None);
        assert_eq!(EngineKind::DotNet.to_string(), "application/x-dotnet-dll");
    }

    #[test]
    fn default_limits_are_the_documented_ones() {
        let l = Limits::default();
        assert_eq!(
            (
                l.max_package_bytes,
                l.max_entries,
                l.max_entry_bytes,
                l.max_total_bytes,
                l.max_ratio,
                l.max_nuspec_bytes
            ),
            (
                256 * 1024 * 1024,
                10_000,
                256 * 1024 * 1024,
                1024 * 1024 * 1024,
                200,
                1024 * 1024
            )
        );
    }

    #[test]
    fn rids_follow_the_architecture() {
        assert_eq!(rid_for_arch("x86_64"), "linux-x64");
        assert_eq!(rid_for_arch("aarch64"), "linux-arm64");
        assert_eq!(rid_for_arch("riscv64"), "linux-riscv64");
        let current = Target::current();
        assert_eq!(current.rid, rid_for_arch(std::env::consts::ARCH));
    }

    #[test]
    fn dotnet_major_is_the_highest_installed_runtime() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(dotnet_major_in(root.path()), None);
        let shared = root.path().join("shared/Microsoft.NETCore.App");
        for v in ["3.1.2", "8.0.11", "10.0.0-preview.1", "junk"] {
            std::fs::create_dir_all(shared.join(v)).unwrap();
        }
        std::fs::write(shared.join("99.0.0"), b"a file, not a runtime").unwrap();
        assert_eq!(dotnet_major_in(root.path()), Some(10));
    }

    #[test]
    fn problems_are_listed_one_per_line() {
        let err = PackageError::Invalid {
            problems: vec![
                Problem::MissingElement { element: "id" },
                Problem::Symlink { name: "a/b".into() },
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid worker package (2 problems); fix every one and upload again:\n\
             - nuspec <metadata> has no <id>, which is required\n\
             - entry \"a/b\" is a symbolic link; packages may contain only regular files and folders"
        );
        assert_eq!(err.problems().len(), 2);
        let one = PackageError::Invalid {
            problems: vec![Problem::NoLibFolder],
        };
        assert!(
            one.to_string()
                .starts_with("invalid worker package (1 problem);")
        );
    }

    #[test]
    fn oversized_package_is_refused_before_reading() {
        let limits = Limits {
            max_package_bytes: 10,
            ..Limits::default()
        };
        let err = inspect(&[0u8; 11], EngineKind::Native, &Target::current(), &limits).unwrap_err();
        assert_eq!(
            err.problems()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["package is 11 bytes, over the limit of 10 bytes"]
        );
    }
}
