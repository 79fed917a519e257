//! C# source code (`text/x-csharp`): the code blob is one UTF-8 C# file, not a `.nupkg`.
//!
//! The supervisor does not compile it (plugin code is only ever handled in a sandboxed host):
//! [`inspect`] checks what can be checked without a compiler, the supervisor stores the file
//! as `<root>/<sha256>/worker.cs`, and a .NET host compiles it with Roslyn
//! (`host-runner/dotnet/bridge/CSharpSource.cs`). The first check of new source is a load with
//! [`VALIDATE_ONLY_ENTRY`] as the entry point: compile, find the entry, create nothing.

use super::{EngineKind, Limits, PackageError, PackageInfo, Problem, sha256_hex};

/// The file name the source is stored under, relative to its folder.
pub const SOURCE_FILE: &str = "worker.cs";

/// `LoadWorker.entry_point` of the supervisor's check of new source: the host compiles the
/// source and finds its entry but creates no instance and runs no worker code.
pub const VALIDATE_ONLY_ENTRY: &str = "<validate-only>";

/// The entry point recorded for C# source (the method the host looks for).
pub const ENTRY_POINT: &str = "Process";

/// Checks a C# source blob: within the size limit, UTF-8, not blank, no NUL bytes.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<PackageInfo, PackageError> {
    let size = bytes.len() as u64;
    let mut problems = Vec::new();
    if size > limits.max_package_bytes {
        problems.push(Problem::PackageTooLarge {
            size,
            limit: limits.max_package_bytes,
        });
    }
    match std::str::from_utf8(bytes) {
        Err(e) => problems.push(Problem::Source {
            reason: format!(
                "the C# source is not valid UTF-8 (at byte {}); save it as UTF-8",
                e.valid_up_to()
            ),
        }),
        Ok(text) if text.trim().is_empty() => problems.push(Problem::Source {
            reason: "the C# source is empty".to_owned(),
        }),
        Ok(text) if text.contains('\0') => problems.push(Problem::Source {
            reason: "the C# source contains NUL characters; is it a binary file?".to_owned(),
        }),
        Ok(_) => {}
    }
    if !problems.is_empty() {
        return Err(PackageError::Invalid { problems });
    }
    let sha256 = sha256_hex(bytes);
    Ok(PackageInfo {
        id: format!("csharp-{}", &sha256[..12]),
        version: "0.0.0".to_owned(),
        abi_version: 1,
        library: "worker".to_owned(),
        entry_point: ENTRY_POINT.to_owned(),
        free_result: String::new(),
        engine: EngineKind::CSharpSource,
        library_path: SOURCE_FILE.to_owned(),
        rid: None,
        tfm: None,
        sha256,
        warnings: Vec::new(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_checks_name_each_problem() {
        let limits = Limits::default();
        let info = inspect(b"public static class W { }", &limits).unwrap();
        assert_eq!(info.engine, EngineKind::CSharpSource);
        assert_eq!(info.library_path, SOURCE_FILE);
        assert_eq!(info.sha256.len(), 64);
        let err = inspect(&[0xff, 0xfe, b'a'], &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
        let err = inspect(b"  \n", &limits).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = inspect(b"class A {}\0", &limits).unwrap_err().to_string();
        assert!(err.contains("NUL"), "{err}");
        let small = Limits {
            max_package_bytes: 4,
            ..Limits::default()
        };
        let err = inspect(b"class A {}", &small).unwrap_err().to_string();
        assert!(err.contains("over the limit"), "{err}");
    }
}
