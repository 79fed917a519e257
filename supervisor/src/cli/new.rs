//! `workmanager new --lang c|cpp|csharp|python NAME`: a worker project to start from (what
//! `sam init` is to Lambda): the source, the C header (or the DevKit reference), a build script
//! that packs with `workmanager pack` (Python: checks and copies the source, which is what
//! `text/x-python` deploys), a test that runs sample events through the package with
//! `workmanager run`, and a README. The templates are in `cli/scaffold/`; the test suite
//! generates, builds and tests a project for each language.

use std::path::{Path, PathBuf};

use super::client::{CliError, exit};

/// The languages `new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// C11 over the C ABI header.
    C,
    /// C++17 over the C ABI header.
    Cpp,
    /// C# against the DevKit (netcoreapp3.1).
    Csharp,
    /// Python (`text/x-python`: a module-level `Process(event)`).
    Python,
}

/// `workmanager new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The worker's name: the folder, the package id and the reply type's prefix
    /// (1-64 of A-Z a-z 0-9 . _ -, starting with a letter).
    pub name: String,
    /// Where to create the folder (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

const WORKER_C: &str = include_str!("scaffold/worker.c");
const WORKER_CPP: &str = include_str!("scaffold/worker.cpp");
const WORKER_CS: &str = include_str!("scaffold/Worker.cs");
const BUILD_NATIVE: &str = include_str!("scaffold/build-native.sh");
const BUILD_CSHARP: &str = include_str!("scaffold/build-csharp.sh");
const WORKER_PY: &str = include_str!("scaffold/worker.py");
const BUILD_PYTHON: &str = include_str!("scaffold/build-python.sh");
const TEST_SH: &str = include_str!("scaffold/test.sh");
const README: &str = include_str!("scaffold/README.md");
const SAMPLE: &str = include_str!("scaffold/sample.json");
const C_HEADER: &str = include_str!("../../../schemas/virtufin_worker_api_c.h");

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The files of a project, as (relative path, contents, executable).
pub fn files(lang: Lang, name: &str) -> Result<Vec<(String, String, bool)>, CliError> {
    if !valid_name(name) {
        return Err(CliError::usage(format!(
            "'{name}' is not a worker name: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter"
        )));
    }
    // The library's file name: lib<lib>.so (dots and dashes are fine there too).
    let lib = name.to_owned();
    let fill = |t: &str| t.replace("__NAME__", name).replace("__LIB__", &lib);
    let (src_name, src, lang_name, guide) = match lang {
        Lang::C => ("worker.c", WORKER_C, "C", "native-workers.md"),
        Lang::Cpp => ("worker.cpp", WORKER_CPP, "C++", "native-workers.md"),
        Lang::Csharp => ("Worker.cs", WORKER_CS, "C#", "dotnet.md"),
        Lang::Python => ("worker.py", WORKER_PY, "Python", "python.md"),
    };
    // What build.sh makes, and the flags `run`/`workers create` need to take it.
    let (package, run_flags, build_what) = match lang {
        Lang::Python => (
            format!("build/{name}.py"),
            "--mime-type text/x-python ",
            format!(
                "checks the source's syntax and copies it to `build/{name}.py` (a `text/x-python` worker is deployed as its source; the daemon checks its imports)"
            ),
        ),
        _ => (
            format!("build/{name}.nupkg"),
            "",
            format!(
                "builds and packs `build/{name}.nupkg` (`workmanager pack` checks it with the daemon's rules)"
            ),
        ),
    };
    let fill = |t: &str| {
        fill(t)
            .replace("__PACKAGE__", &package)
            .replace("__RUN_FLAGS__", run_flags)
            .replace("__BUILD_WHAT__", &build_what)
    };
    let build = match lang {
        Lang::C => fill(BUILD_NATIVE)
            .replace("__COMPILE__", "cc -std=c11")
            .replace("__SRC__", src_name),
        Lang::Cpp => fill(BUILD_NATIVE)
            .replace("__COMPILE__", "c++ -std=c++17")
            .replace("__SRC__", src_name),
        Lang::Csharp => fill(BUILD_CSHARP),
        Lang::Python => fill(BUILD_PYTHON),
    };
    let header_row = if matches!(lang, Lang::Csharp | Lang::Python) {
        String::new()
    } else {
        "| `include/virtufin_worker_api_c.h` | the C ABI header (a copy of the daemon's; ABI version 1) |\n".to_owned()
    };
    let readme = fill(README)
        .replace("__LANG__", lang_name)
        .replace("__SRC__", src_name)
        .replace("__GUIDE__", guide)
        .replace("__HEADER_ROW__", &header_row);
    let mut out = vec![
        (format!("src/{src_name}"), fill(src), false),
        ("build.sh".to_owned(), build, true),
        ("test.sh".to_owned(), fill(TEST_SH), true),
        ("README.md".to_owned(), readme, false),
        ("events/sample.json".to_owned(), fill(SAMPLE), false),
        (".gitignore".to_owned(), "build/\n".to_owned(), false),
    ];
    if matches!(lang, Lang::C | Lang::Cpp) {
        out.push((
            "include/virtufin_worker_api_c.h".to_owned(),
            C_HEADER.to_owned(),
            false,
        ));
    }
    Ok(out)
}

/// Runs `workmanager new`.
pub fn new(a: NewArgs) -> Result<(), CliError> {
    let files = files(a.lang, &a.name)?;
    let root = a.dir.join(&a.name);
    if root.exists() {
        return Err(CliError::usage(format!(
            "{} already exists; pick another name or --dir",
            root.display()
        )));
    }
    for (rel, contents, executable) in &files {
        write(&root.join(rel), contents, *executable)?;
    }
    eprintln!(
        "workmanager: created {} ({} files); next: cd {} && ./test.sh",
        root.display(),
        files.len(),
        root.display()
    );
    Ok(())
}

fn write(path: &Path, contents: &str, executable: bool) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |e: std::io::Error| {
        CliError::new(
            exit::FAILED,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, contents).map_err(err)?;
    if executable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_placeholders() {
        assert!(valid_name("my-worker.v2"));
        assert!(!valid_name("2x") && !valid_name("a/b") && !valid_name(""));
        for lang in [Lang::C, Lang::Cpp, Lang::Csharp, Lang::Python] {
            let f = files(lang, "echo").unwrap();
            for (path, text, _) in &f {
                assert!(
                    !text.contains("__NAME__") && !text.contains("__LIB__"),
                    "{path}"
                );
                assert!(
                    !text.contains("__COMPILE__") && !text.contains("__SRC__"),
                    "{path}"
                );
                assert!(
                    !text.contains("__PACKAGE__")
                        && !text.contains("__RUN_FLAGS__")
                        && !text.contains("__BUILD_WHAT__"),
                    "{path}"
                );
            }
        }
        let py = files(Lang::Python, "echo").unwrap();
        assert!(py.iter().any(|(p, _, _)| p == "src/worker.py"));
        assert!(!py.iter().any(|(p, _, _)| p.ends_with(".h")));
    }
}
