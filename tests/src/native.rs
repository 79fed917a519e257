//! Builds C and C++ fixture plugins (and small C test programs) with the system compilers.
//!
//! Sources are read from `tests/fixtures/native/` (C) and `tests/fixtures/cpp/` (C++) unless a
//! path is absolute; `schemas/` is always on the include path so fixtures include
//! `virtufin_worker_api_c.h` and `virtufin_worker_api_fb.h` exactly as worker authors do.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{content_key, fixtures_out, fixtures_src, with_dir_lock, workspace_root};

/// Source language of a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    C,
    Cpp,
}

impl Lang {
    fn compiler(self) -> &'static str {
        match self {
            Lang::C => "cc",
            Lang::Cpp => "c++",
        }
    }

    fn std_flags(self) -> &'static [&'static str] {
        match self {
            Lang::C => &["-std=c11"],
            Lang::Cpp => &["-std=c++17"],
        }
    }

    fn src_kind(self) -> &'static str {
        match self {
            Lang::C => "native",
            Lang::Cpp => "cpp",
        }
    }
}

/// What to build: a shared library (a plugin) or an executable (a test program).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    SharedLib,
    Executable,
}

/// One fixture build.
#[derive(Debug, Clone)]
pub struct Build<'a> {
    pub name: &'a str,
    pub lang: Lang,
    pub output: Output,
    pub sources: &'a [&'a str],
    pub flags: &'a [&'a str],
}

impl<'a> Build<'a> {
    /// A plugin: `lib<name>.so` from `sources`.
    pub fn plugin(name: &'a str, lang: Lang, sources: &'a [&'a str]) -> Self {
        Build {
            name,
            lang,
            output: Output::SharedLib,
            sources,
            flags: &[],
        }
    }

    /// An executable named `name` from `sources`.
    pub fn program(name: &'a str, lang: Lang, sources: &'a [&'a str]) -> Self {
        Build {
            name,
            lang,
            output: Output::Executable,
            sources,
            flags: &[],
        }
    }

    /// Extra compiler flags (for example `-fsanitize=address`, `-DVARIANT=2`).
    pub fn flags(mut self, flags: &'a [&'a str]) -> Self {
        self.flags = flags;
        self
    }

    fn source_path(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            fixtures_src(self.lang.src_kind()).join(p)
        }
    }

    /// Compiles (once per content) and returns the path of the output.
    /// Panics with the compiler's output when the build fails: a fixture that does not build
    /// is a broken test, not a condition to handle.
    pub fn build(&self) -> PathBuf {
        let schemas = workspace_root().join("schemas");
        let mut key_parts: Vec<Vec<u8>> = vec![
            self.name.as_bytes().to_vec(),
            format!("{:?}{:?}", self.lang, self.output).into_bytes(),
        ];
        for f in self.flags {
            key_parts.push(f.as_bytes().to_vec());
        }
        let sources: Vec<PathBuf> = self.sources.iter().map(|s| self.source_path(s)).collect();
        for s in &sources {
            key_parts.push(
                std::fs::read(s).unwrap_or_else(|e| panic!("fixture source {}: {e}", s.display())),
            );
        }
        for h in ["virtufin_worker_api_c.h", "virtufin_worker_api_fb.h"] {
            key_parts.push(std::fs::read(schemas.join(h)).unwrap_or_default());
        }
        // Fixtures include local headers (`cabi_tlv.h`, also as `../native/cabi_tlv.h` from C++):
        // a change to one of them must rebuild.
        for h in local_headers(&sources) {
            key_parts.push(
                h.file_name()
                    .map(|n| n.as_encoded_bytes().to_vec())
                    .unwrap_or_default(),
            );
            key_parts.push(std::fs::read(&h).unwrap_or_default());
        }
        let refs: Vec<&[u8]> = key_parts.iter().map(Vec::as_slice).collect();
        let key = content_key(&refs);
        let out_dir = fixtures_out("native").join(format!("{}-{key}", self.name));
        let file_name = match self.output {
            Output::SharedLib => format!("lib{}.so", self.name),
            Output::Executable => self.name.to_string(),
        };
        let out = out_dir.join(&file_name);
        with_dir_lock(&fixtures_out("native"), || {
            if out.exists() {
                return;
            }
            std::fs::create_dir_all(&out_dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", out_dir.display()));
            let tmp = out_dir.join(format!(".{file_name}.tmp"));
            let mut cmd = Command::new(self.lang.compiler());
            cmd.args(self.lang.std_flags())
                .args(["-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC"])
                .arg("-I")
                .arg(&schemas);
            if self.output == Output::SharedLib {
                cmd.arg("-shared");
            }
            cmd.args(self.flags).arg("-o").arg(&tmp).args(&sources);
            let res = cmd
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.lang.compiler()));
            assert!(
                res.status.success(),
                "building fixture {} failed ({:?}):\n{}{}",
                self.name,
                cmd,
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr)
            );
            std::fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename {}: {e}", out.display()));
        });
        out
    }
}

/// The `*.h` files next to the sources and in `tests/fixtures/native/`, sorted, deduplicated.
fn local_headers(sources: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = sources
        .iter()
        .filter_map(|s| s.parent().map(Path::to_path_buf))
        .collect();
    dirs.push(fixtures_src("native"));
    let mut headers: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    headers.dedup();
    headers
}
