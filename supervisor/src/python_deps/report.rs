//! What a dependency install did (the create/reload response's `dependencies`) and what it
//! says while it runs (the `lifecycle.dependencies.*` events).

use serde::Serialize;

/// Where a project installed for a wheel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A wheel vendored in the package itself.
    Package,
    /// An earlier install for the same wheel (same sha256), reused as is.
    Cache,
    /// `PYTHON_DEFAULT_INDEX_URL` or a `PYTHON_FIND_LINKS` location (see `url`).
    Index,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Package => "package",
            Source::Cache => "cache",
            Source::Index => "index",
        }
    }
}

/// One installed project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub name: String,
    pub version: String,
    pub source: Source,
    /// Where pip took it from (a `file://` URL for find-links folders and vendored wheels);
    /// absent for the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Named by the wheel's `Requires-Dist` (false: pulled in by another project).
    pub requested: bool,
    /// Milliseconds pip spent finding and fetching it (absent for the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<u64>,
}

/// The whole install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The wheel's `Requires-Dist`, as written.
    pub requires: Vec<String>,
    /// Every project in the wheel's dependency folder, sorted by name.
    pub projects: Vec<Project>,
    /// Whether the folder of an earlier create of the same wheel was reused.
    pub reused: bool,
    /// Milliseconds from the start of the install to the folder being ready.
    pub elapsed_ms: u64,
}

/// One step of an install, for whoever publishes lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallEvent {
    /// About to resolve `requires`.
    Started { requires: Vec<String> },
    /// pip moved on: fetching `project` (`step` `fetching`), or installing what it fetched
    /// (`step` `installing`, no project). `message` is pip's line.
    Progress {
        project: Option<String>,
        step: &'static str,
        message: String,
        elapsed_ms: u64,
    },
    /// Done; the same report as the create response's `dependencies`.
    Finished(Report),
    /// Refused or failed: `project` is the one that failed when known, `message` the reason
    /// (pip's own words for a pip failure), the same text as the 422.
    Failed {
        project: Option<String>,
        message: String,
        elapsed_ms: u64,
    },
}

/// Where install events go (must not block: it runs on the install's task).
pub type InstallSink<'a> = &'a (dyn Fn(InstallEvent) + Send + Sync);
