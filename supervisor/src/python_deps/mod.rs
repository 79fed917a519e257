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
//!   and later creates of the same wheel reuse it;
//! - wheels vendored in the package (`*.whl` entries) offered first (`--find-links`);
//! - every step told to a sink (started, each project pip fetches, finished or failed), which
//!   the control plane turns into `lifecycle.dependencies.*` events; the [`Report`] is the
//!   create response's `dependencies`.

mod pip;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wm_shared::package::python_wheel::{self, normalize_name, requirement_name};

pub use report::{InstallEvent, InstallSink, Project, Report, Source};

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

fn allowed(s: &DepsSettings, project: &str) -> bool {
    s.allowed.is_empty() || s.allowed.iter().any(|a| *a == normalize_name(project))
}

/// What one install needs besides the settings.
pub struct InstallRequest<'a> {
    /// The wheel's `Requires-Dist`.
    pub requires: &'a [String],
    /// `<package dir>.pydeps`.
    pub target: &'a Path,
    /// Wheels vendored in the package, (file name, bytes).
    pub vendored: &'a [(String, Vec<u8>)],
}

/// Installs `requires` into `target` (nothing to do when it is empty or already there),
/// telling `sink` each step: started, a progress step per project pip fetches, then finished
/// or failed (a failure is also the returned error, with the same text).
pub async fn install(
    req: &InstallRequest<'_>,
    s: &DepsSettings,
    sink: InstallSink<'_>,
) -> Result<Report, DepsError> {
    if req.requires.is_empty() {
        return Ok(Report::default());
    }
    let started = Instant::now();
    sink(InstallEvent::Started {
        requires: req.requires.to_vec(),
    });
    let result = install_steps(req, s, started, sink).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(mut report) => {
            report.elapsed_ms = elapsed_ms;
            sink(InstallEvent::Finished(report.clone()));
            Ok(report)
        }
        Err((e, project)) => {
            sink(InstallEvent::Failed {
                project,
                message: e.to_string(),
                elapsed_ms,
            });
            Err(e)
        }
    }
}

/// A failure and the project it is about, when known.
type StepError = (DepsError, Option<String>);

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let path = path.to_path_buf();
    move |source| (DepsError::Io { path, source }, None)
}

async fn install_steps(
    req: &InstallRequest<'_>,
    s: &DepsSettings,
    started: Instant,
    sink: InstallSink<'_>,
) -> Result<Report, StepError> {
    let vendored_projects: Vec<String> = req
        .vendored
        .iter()
        .filter_map(|(n, _)| python_wheel::wheel_file_project(n).map(normalize_name))
        .collect();
    for r in req.requires {
        let name = requirement_name(r);
        if !allowed(s, name) && !vendored_projects.contains(&normalize_name(name)) {
            return Err((
                DepsError::NotAllowed(name.to_string()),
                Some(name.to_string()),
            ));
        }
    }
    let target = req.target;
    if target.is_dir() {
        return Ok(Report {
            requires: req.requires.to_vec(),
            projects: cached(target, req.requires).await,
            reused: true,
            elapsed_ms: 0,
        });
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io_error(parent))?;
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
    let report_file = sibling(&tmp, ".report.json");
    let vendored_dir = sibling(&tmp, ".vendored");
    let result = pip_into(req, s, started, sink, &tmp, &report_file, &vendored_dir).await;
    let result = match result {
        Ok(projects) => match tokio::fs::rename(&tmp, target).await {
            Ok(()) => Ok((projects, false)),
            // A concurrent create of the same wheel finished first: same inputs.
            Err(_) if target.is_dir() => Ok((projects, true)),
            Err(source) => Err((
                DepsError::Io {
                    path: target.to_path_buf(),
                    source,
                },
                None,
            )),
        },
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let _ = tokio::fs::remove_dir_all(&vendored_dir).await;
    let _ = tokio::fs::remove_file(&report_file).await;
    let (projects, reused) = result?;
    Ok(Report {
        requires: req.requires.to_vec(),
        projects,
        reused,
        elapsed_ms: 0,
    })
}

/// pip into `tmp`, then the modes fixed and the installed projects checked.
async fn pip_into(
    req: &InstallRequest<'_>,
    s: &DepsSettings,
    started: Instant,
    sink: InstallSink<'_>,
    tmp: &Path,
    report_file: &Path,
    vendored_dir: &Path,
) -> Result<Vec<Project>, StepError> {
    if !req.vendored.is_empty() {
        tokio::fs::create_dir_all(vendored_dir)
            .await
            .map_err(io_error(vendored_dir))?;
        for (name, bytes) in req.vendored {
            let path = vendored_dir.join(name);
            tokio::fs::write(&path, bytes)
                .await
                .map_err(io_error(&path))?;
        }
    }
    let run = pip::PipRun {
        requires: req.requires,
        into: tmp,
        report: report_file,
        vendored: (!req.vendored.is_empty()).then_some(vendored_dir),
        settings: s,
        started,
    };
    let outcome = pip::run(&run, sink).await;
    let fetched = outcome.result.map_err(|e| (e, outcome.project))?;
    // pip leaves its temp-folder modes (0700) on what it moves in; hosts run as another uid
    // and must read it all.
    let walk = tmp.to_path_buf();
    tokio::task::spawn_blocking(move || readable_by_all(&walk))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io_error(tmp))?;
    let projects = installed(tmp, &fetched, vendored_dir, &outcome.fetch_ms).await;
    match projects
        .iter()
        .find(|p| p.source != Source::Package && !allowed(s, &p.name))
    {
        Some(p) => Err((DepsError::NotAllowed(p.name.clone()), Some(p.name.clone()))),
        None => Ok(projects),
    }
}

/// `<path><suffix>`, beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The projects now in `dir`, with where pip took each (its report) and how long that took.
async fn installed(
    dir: &Path,
    fetched: &[pip::Fetched],
    vendored_dir: &Path,
    fetch_ms: &[(String, u64)],
) -> Vec<Project> {
    let vendored_url = format!("file://{}/", vendored_dir.display());
    let mut out: Vec<Project> = dist_infos(dir)
        .await
        .into_iter()
        .map(|(name, version)| {
            let key = normalize_name(&name);
            let f = fetched.iter().find(|f| normalize_name(&f.name) == key);
            let url = f.and_then(|f| f.url.clone());
            let source = match &url {
                Some(u) if u.starts_with(&vendored_url) => Source::Package,
                _ => Source::Index,
            };
            Project {
                name: f.map_or(name, |f| f.name.clone()),
                version: f.map_or(version, |f| f.version.clone()),
                source,
                url,
                requested: f.is_some_and(|f| f.requested),
                fetch_ms: fetch_ms.iter().find(|(n, _)| *n == key).map(|(_, ms)| *ms),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The projects of an earlier install, reused.
async fn cached(dir: &Path, requires: &[String]) -> Vec<Project> {
    let requested: Vec<String> = requires
        .iter()
        .map(|r| normalize_name(requirement_name(r)))
        .collect();
    dist_infos(dir)
        .await
        .into_iter()
        .map(|(name, version)| Project {
            requested: requested.contains(&normalize_name(&name)),
            name,
            version,
            source: Source::Cache,
            url: None,
            fetch_ms: None,
        })
        .collect()
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

/// (project, version) of every `*.dist-info` in `dir`, sorted.
async fn dist_infos(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".dist-info")
            && let Some((project, version)) = stem.rsplit_once('-')
        {
            out.push((project.to_string(), version.to_string()));
        }
    }
    out.sort();
    out
}
