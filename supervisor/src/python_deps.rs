//! Installing the dependencies of an `application/x-python` wheel: by the daemon (never by a
//! sandboxed host), with pip, into `<package dir>.pydeps` (keyed by the wheel's sha256, see
//! `wm_shared::package::python_wheel::deps_dir`), which the python engine puts on `sys.path`.
//!
//! - `--only-binary :all:`: wheels only, so no dependency's `setup.py` ever runs here;
//! - from `PYTHON_DEFAULT_INDEX_URL` (empty: pip's default; `none`: no index) and
//!   `PYTHON_FIND_LINKS`;
//! - `PYTHON_ALLOWED_PACKAGES` checked before (direct requirements) and after (every
//!   installed project, so transitive ones too) the install;
//! - bounded by `PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS`; pip is killed past it;
//! - into a temporary sibling folder renamed into place, so a folder that exists is complete
//!   and later creates of the same wheel reuse it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use wm_shared::package::python_wheel::{normalize_name, requirement_name};

/// `PYTHON_DEFAULT_INDEX_URL`, `PYTHON_FIND_LINKS`, `PYTHON_ALLOWED_PACKAGES`,
/// `PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepsSettings {
    pub index_url: String,
    pub find_links: Vec<String>,
    /// Normalised project names; empty allows any.
    pub allowed: Vec<String>,
    pub timeout: Duration,
}

/// Why the dependencies could not be installed: each is the author's to fix (422).
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error(
        "dependency {0:?} is not in PYTHON_ALLOWED_PACKAGES; vendor it in the wheel or ask the operator to allow it"
    )]
    NotAllowed(String),
    #[error(
        "installing the dependencies took longer than {0:?} (PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS)"
    )]
    Timeout(Duration),
    #[error("pip could not install the dependencies {requires:?}: {output}")]
    Pip {
        requires: Vec<String>,
        output: String,
    },
    #[error("cannot run pip ({0}); install python3-pip on the daemon's machine")]
    Spawn(std::io::Error),
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an install did, for the create response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Projects now in the folder (`name==version`), sorted.
    pub projects: Vec<String>,
    /// Whether an earlier install of the same wheel was reused.
    pub reused: bool,
}

fn allowed(s: &DepsSettings, project: &str) -> bool {
    s.allowed.is_empty() || s.allowed.iter().any(|a| *a == normalize_name(project))
}

/// Installs `requires` into `target` (nothing to do when it is empty or already there).
pub async fn install(
    requires: &[String],
    target: &Path,
    s: &DepsSettings,
) -> Result<Installed, DepsError> {
    if requires.is_empty() {
        return Ok(Installed {
            projects: Vec::new(),
            reused: false,
        });
    }
    for r in requires {
        let name = requirement_name(r);
        if !allowed(s, name) {
            return Err(DepsError::NotAllowed(name.to_string()));
        }
    }
    if target.is_dir() {
        return Ok(Installed {
            projects: projects(target).await,
            reused: true,
        });
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|source| DepsError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    // `.tmp-*`: swept at start by `CodeStore::sweep_temporaries` if an install is cut short.
    let tmp = parent.join(format!(
        ".tmp-pydeps-{}-{}-{}",
        target
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = run_pip(requires, &tmp, s).await;
    let result = match result {
        Ok(()) => {
            // pip leaves its temp-folder modes (0700) on what it moves in; hosts run as
            // another uid and must read it all.
            let walk = tmp.clone();
            tokio::task::spawn_blocking(move || readable_by_all(&walk))
                .await
                .map_err(|e| DepsError::Io {
                    path: tmp.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(|source| DepsError::Io {
                    path: tmp.clone(),
                    source,
                })?;
            let installed = projects(&tmp).await;
            match installed
                .iter()
                .map(|p| p.split("==").next().unwrap_or(p))
                .find(|p| !allowed(s, p))
            {
                Some(p) => Err(DepsError::NotAllowed(p.to_string())),
                None => match tokio::fs::rename(&tmp, target).await {
                    Ok(()) => Ok(Installed {
                        projects: installed,
                        reused: false,
                    }),
                    // A concurrent create of the same wheel finished first: same inputs.
                    Err(_) if target.is_dir() => Ok(Installed {
                        projects: installed,
                        reused: true,
                    }),
                    Err(source) => Err(DepsError::Io {
                        path: target.to_path_buf(),
                        source,
                    }),
                },
            }
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    result
}

async fn run_pip(requires: &[String], into: &Path, s: &DepsSettings) -> Result<(), DepsError> {
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut cmd = tokio::process::Command::new(python);
    cmd.args([
        "-I",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--no-warn-script-location",
        "--only-binary",
        ":all:",
        "--target",
    ])
    .arg(into);
    match s.index_url.as_str() {
        "" => {}
        "none" => {
            cmd.arg("--no-index");
        }
        url => {
            cmd.args(["--index-url", url]);
        }
    }
    for l in &s.find_links {
        cmd.args(["--find-links", l]);
    }
    cmd.arg("--").args(requires);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(DepsError::Spawn)?;
    let out = tokio::time::timeout(s.timeout, child.wait_with_output())
        .await
        .map_err(|_| DepsError::Timeout(s.timeout))?
        .map_err(DepsError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    // pip's last lines say what failed; keep the response small.
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(6)..].join(" | ");
    Err(DepsError::Pip {
        requires: requires.to_vec(),
        output: tail.chars().take(2000).collect(),
    })
}

/// Folders 0755, files 0644, links left alone (never followed).
fn readable_by_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            readable_by_all(&e.path())?;
        } else if t.is_file() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// `name==version` of every `*.dist-info` in `dir`, sorted.
async fn projects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".dist-info")
            && let Some((project, version)) = stem.rsplit_once('-')
        {
            out.push(format!("{project}=={version}"));
        }
    }
    out.sort();
    out
}
