//! One pip run: stdout read line by line as it comes (each project pip starts to fetch is a
//! progress step), stderr kept for the failure message, and pip's `--report` read afterwards
//! for what it installed and from where.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use wm_shared::package::python_wheel::{normalize_name, requirement_name, wheel_file_project};

use super::report::{InstallEvent, InstallSink};
use super::{DepsError, DepsSettings};

/// Largest stderr kept from pip (its last lines are the message).
const MAX_STDERR_BYTES: u64 = 1 << 20;

/// What one pip run needs.
pub(super) struct PipRun<'a> {
    pub requires: &'a [String],
    /// The `--target` folder.
    pub into: &'a Path,
    /// Where pip writes its `--report` JSON.
    pub report: &'a Path,
    /// A folder of the package's vendored wheels, offered first.
    pub vendored: Option<&'a Path>,
    pub settings: &'a DepsSettings,
    /// When the install started (progress times count from there).
    pub started: Instant,
}

/// One project pip installed, from its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fetched {
    pub name: String,
    pub version: String,
    pub url: Option<String>,
    pub requested: bool,
}

/// What pip did; `project` is the one it was busy with last (for a failure that does not say).
pub(super) struct PipOutcome {
    pub result: Result<Vec<Fetched>, DepsError>,
    pub project: Option<String>,
    /// Normalised project name -> milliseconds from its first line to the next step.
    pub fetch_ms: Vec<(String, u64)>,
}

/// Follows pip's stdout: `Collecting <requirement>` (from an index) and `Processing
/// <file>.whl` (a local wheel) start a project; `Installing collected packages` ends fetching.
struct Tracker<'a> {
    started: Instant,
    current: Option<(String, Instant)>,
    last: Option<String>,
    fetch_ms: Vec<(String, u64)>,
    sink: InstallSink<'a>,
}

impl Tracker<'_> {
    fn close(&mut self) {
        if let Some((p, since)) = self.current.take() {
            let ms = since.elapsed().as_millis() as u64;
            self.fetch_ms.push((normalize_name(&p), ms));
        }
    }

    fn line(&mut self, line: &str) {
        let t = line.trim();
        let project = if let Some(rest) = t.strip_prefix("Collecting ") {
            Some(requirement_name(rest.trim()).to_string())
        } else if let Some(rest) = t.strip_prefix("Processing ") {
            wheel_file_project(rest.trim()).map(str::to_string)
        } else {
            None
        };
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        if let Some(p) = project.filter(|p| !p.is_empty()) {
            self.close();
            self.current = Some((p.clone(), Instant::now()));
            self.last = Some(p.clone());
            (self.sink)(InstallEvent::Progress {
                project: Some(p),
                step: "fetching",
                message: t.to_string(),
                elapsed_ms,
            });
        } else if t.starts_with("Installing collected packages") {
            self.close();
            self.last = None;
            (self.sink)(InstallEvent::Progress {
                project: None,
                step: "installing",
                message: t.to_string(),
                elapsed_ms,
            });
        }
    }
}

fn command(p: &PipRun<'_>) -> tokio::process::Command {
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut cmd = tokio::process::Command::new(python);
    // -u: unbuffered, so each line arrives as pip prints it (-I ignores PYTHONUNBUFFERED).
    cmd.args([
        "-I",
        "-u",
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
        "--only-binary",
        ":all:",
        "--report",
    ])
    .arg(p.report)
    .arg("--target")
    .arg(p.into);
    match p.settings.index_url.as_str() {
        "" => {}
        "none" => {
            cmd.arg("--no-index");
        }
        url => {
            cmd.args(["--index-url", url]);
        }
    }
    if let Some(v) = p.vendored {
        cmd.arg("--find-links").arg(v);
    }
    for l in &p.settings.find_links {
        cmd.args(["--find-links", l]);
    }
    cmd.arg("--").args(p.requires);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs pip within `PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS` (killed past it).
pub(super) async fn run(p: &PipRun<'_>, sink: InstallSink<'_>) -> PipOutcome {
    let mut tracker = Tracker {
        started: p.started,
        current: None,
        last: None,
        fetch_ms: Vec::new(),
        sink,
    };
    let mut child = match command(p).spawn() {
        Ok(c) => c,
        Err(e) => {
            return PipOutcome {
                result: Err(DepsError::Spawn(e)),
                project: None,
                fetch_ms: Vec::new(),
            };
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Read concurrently with stdout so that neither pipe fills and stalls pip.
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(MAX_STDERR_BYTES).read_to_end(&mut buf).await;
        }
        buf
    });
    let waited = tokio::time::timeout(p.settings.timeout, async {
        if let Some(out) = stdout {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracker.line(&line);
            }
        }
        child.wait().await
    })
    .await;
    let result = match waited {
        Err(_) => {
            let _ = child.start_kill();
            errors.abort();
            // pip prints `Collecting X` only once it found X; before that, it is looking for
            // the first direct requirement it has not fetched yet.
            if tracker.current.is_none() {
                tracker.last = p
                    .requires
                    .iter()
                    .map(|r| requirement_name(r))
                    .find(|n| {
                        !tracker
                            .fetch_ms
                            .iter()
                            .any(|(f, _)| *f == normalize_name(n))
                    })
                    .map(str::to_string);
            }
            Err(DepsError::Timeout(p.settings.timeout))
        }
        Ok(Err(e)) => Err(DepsError::Spawn(e)),
        Ok(Ok(status)) => {
            let stderr = errors.await.unwrap_or_default();
            if status.success() {
                Ok(read_report(p.report).await)
            } else {
                let text = String::from_utf8_lossy(&stderr);
                if let Some(failed) = failed_project(&text) {
                    tracker.last = Some(failed);
                }
                Err(DepsError::Pip {
                    requires: p.requires.to_vec(),
                    output: last_lines(&text),
                })
            }
        }
    };
    tracker.close();
    PipOutcome {
        result,
        project: tracker.last,
        fetch_ms: tracker.fetch_ms,
    }
}

/// pip's last lines say what failed; keep the response small.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING: Running pip as the 'root' user"))
        .collect();
    lines[lines.len().saturating_sub(6)..]
        .join(" | ")
        .chars()
        .take(2000)
        .collect()
}

/// The project pip names in its resolution errors.
fn failed_project(stderr: &str) -> Option<String> {
    const MARKERS: [&str; 2] = [
        "No matching distribution found for ",
        "Could not find a version that satisfies the requirement ",
    ];
    stderr.lines().find_map(|l| {
        MARKERS.iter().find_map(|m| {
            let rest = &l[l.find(m)? + m.len()..];
            let name = requirement_name(rest.trim());
            (!name.is_empty()).then(|| name.to_string())
        })
    })
}

/// The `install` list of pip's report (format version 1).
async fn read_report(path: &Path) -> Vec<Fetched> {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let Some(items) = v["install"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| {
            Some(Fetched {
                name: i["metadata"]["name"].as_str()?.to_string(),
                version: i["metadata"]["version"].as_str()?.to_string(),
                url: i["download_info"]["url"].as_str().map(without_credentials),
                requested: i["requested"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// A URL without its `user:password@` part: an index URL may carry credentials, and these URLs
/// go into API responses and events.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wm_shared::sync::Locked as _;

    #[test]
    fn credentials_never_leave_in_a_url() {
        assert_eq!(
            without_credentials("https://u:p%40ss@pypi.example/simple/a-1.whl#sha256=x"),
            "https://pypi.example/simple/a-1.whl#sha256=x"
        );
        assert_eq!(
            without_credentials("file:///srv/wheels/a@1-py3-none-any.whl"),
            "file:///srv/wheels/a@1-py3-none-any.whl"
        );
        assert_eq!(without_credentials("not a url"), "not a url");
    }

    #[test]
    fn the_failed_project_and_the_last_lines_come_from_pip_s_stderr() {
        let err = "WARNING: Running pip as the 'root' user can result in broken permissions\n\
                   ERROR: Could not find a version that satisfies the requirement nosuchdep>=1 (from versions: none)\n\
                   ERROR: No matching distribution found for nosuchdep>=1\n";
        assert_eq!(failed_project(err).as_deref(), Some("nosuchdep"));
        assert_eq!(
            last_lines(err),
            "ERROR: Could not find a version that satisfies the requirement nosuchdep>=1 (from versions: none) | ERROR: No matching distribution found for nosuchdep>=1"
        );
        assert_eq!(failed_project("ERROR: something else"), None);
    }

    #[test]
    fn progress_follows_pip_s_lines() {
        let seen = std::sync::Mutex::new(Vec::new());
        let sink = |e: InstallEvent| {
            if let InstallEvent::Progress { project, step, .. } = e {
                seen.locked().push((project, step));
            }
        };
        let mut t = Tracker {
            started: Instant::now(),
            current: None,
            last: None,
            fetch_ms: Vec::new(),
            sink: &sink,
        };
        for l in [
            "Looking in links: /tmp/links",
            "Collecting Tiny_Dep>=1.0",
            "  Downloading tiny_dep-1.0-py3-none-any.whl (1 kB)",
            "Processing /tmp/links/other_dep-2.0-py3-none-any.whl",
            "Installing collected packages: tiny_dep, other_dep",
            "Successfully installed other_dep-2.0 tiny_dep-1.0",
        ] {
            t.line(l);
        }
        assert_eq!(
            *seen.locked(),
            vec![
                (Some("Tiny_Dep".to_string()), "fetching"),
                (Some("other_dep".to_string()), "fetching"),
                (None, "installing"),
            ]
        );
        let names: Vec<&str> = t.fetch_ms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tiny-dep", "other-dep"]);
        assert_eq!(t.last, None);
    }
}
