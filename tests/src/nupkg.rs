//! Builds `.nupkg` worker packages in memory, as worker authors' build scripts do with `zip`.

use std::io::Write;
use std::path::Path;

/// The NuGet nuspec namespace the seed's example uses.
pub const NUSPEC_NS: &str = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";

/// A package under construction: a list of zip entries in order.
#[derive(Debug, Clone, Default)]
pub struct Nupkg {
    entries: Vec<(String, Vec<u8>)>,
}

impl Nupkg {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `<id>.nuspec` at the root with `id`, `version` and extra `<metadata>` children
    /// (raw XML, e.g. `<virtufinLibrary>echo</virtufinLibrary>`).
    pub fn nuspec(self, id: &str, version: &str, extra_metadata: &str) -> Self {
        let xml = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="{NUSPEC_NS}">
  <metadata>
    <id>{id}</id>
    <version>{version}</version>
    <authors>workmanager tests</authors>
    <description>fixture</description>
    {extra_metadata}
  </metadata>
</package>
"#
        );
        self.file(&format!("{id}.nuspec"), xml.into_bytes())
    }

    /// Adds an entry with the given bytes.
    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.entries.push((name.to_string(), bytes.into()));
        self
    }

    /// Adds an entry with the contents of a file on disk.
    pub fn file_from(self, name: &str, path: &Path) -> Self {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("reading {} for the package: {e}", path.display()));
        self.file(name, bytes)
    }

    /// The zip bytes (deflate).
    pub fn build(&self) -> Vec<u8> {
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in &self.entries {
            zw.start_file(name.as_str(), opts)
                .unwrap_or_else(|e| panic!("zip entry {name}: {e}"));
            zw.write_all(bytes)
                .unwrap_or_else(|e| panic!("zip entry {name}: {e}"));
        }
        zw.finish()
            .unwrap_or_else(|e| panic!("finishing zip: {e}"))
            .into_inner()
    }
}

/// A native worker package for linux-x64: nuspec + `runtimes/linux-x64/native/lib<library>.so`.
/// `extra_metadata` goes into `<metadata>` (pass `<virtufinLibrary>` there when `library`
/// differs from `id`).
pub fn native(id: &str, library: &str, so_path: &Path, extra_metadata: &str) -> Vec<u8> {
    Nupkg::new()
        .nuspec(id, "0.0.1", extra_metadata)
        .file_from(
            &format!("runtimes/linux-x64/native/lib{library}.so"),
            so_path,
        )
        .build()
}
