//! The control plane's Python steps at create and reload: the import check of a
//! `text/x-python` source, and a wheel's dependency install with its steps told to the
//! listeners (published as `lifecycle.dependencies.*` events by `serve.rs`).

use serde_json::{Value, json};
use wm_shared::package::{self, PackageInfo};

use super::{Control, package_error};
use crate::api::error::ApiError;
use crate::python_deps::{InstallEvent, InstallRequest, Report};

/// The worker a code check is for: the one being created (its id is chosen before the code
/// is checked, so events name it even when the create then fails) or reloaded.
#[derive(Debug, Clone)]
pub struct ForWorker {
    pub id: String,
    pub topic: String,
    pub group: Option<String>,
    /// `create` or `reload`.
    pub operation: &'static str,
}

/// One step of a wheel's dependency install, with what it is for.
#[derive(Debug, Clone)]
pub struct DepsEvent {
    /// The worker created (or not, if the create fails) or reloaded.
    pub worker_id: String,
    pub topic: String,
    pub group: Option<String>,
    /// `create` or `reload`.
    pub operation: &'static str,
    /// The wheel's project name, version and sha256.
    pub package: String,
    pub package_version: String,
    pub sha256: String,
    pub event: InstallEvent,
}

impl DepsEvent {
    /// The last part of the event type: `started`, `progress`, `finished`, `failed`.
    pub fn step(&self) -> &'static str {
        match self.event {
            InstallEvent::Started { .. } => "started",
            InstallEvent::Progress { .. } => "progress",
            InstallEvent::Finished(_) => "finished",
            InstallEvent::Failed { .. } => "failed",
        }
    }

    /// The event's data: the lifecycle keys (`worker_id`, `group`, `topic`, `error_type`,
    /// `error_message`) plus the install's (docs/python.md).
    pub fn data(&self) -> Value {
        let mut data = json!({
            "worker_id": self.worker_id,
            "group": self.group,
            "topic": self.topic,
            "error_type": null,
            "error_message": null,
            "operation": self.operation,
            "package": {"name": self.package, "version": self.package_version, "sha256": self.sha256},
        });
        let extra = match &self.event {
            InstallEvent::Started { requires } => json!({"requires": requires}),
            InstallEvent::Progress {
                project,
                step,
                message,
                elapsed_ms,
            } => json!({"project": project, "step": step, "message": message,
                        "elapsed_ms": elapsed_ms}),
            InstallEvent::Finished(r) => json!({
                "requires": r.requires,
                "reused": r.reused,
                "elapsed_ms": r.elapsed_ms,
                "projects": r.projects.iter().map(|p| json!({
                    "name": p.name, "version": p.version, "source": p.source.as_str(),
                    "url": p.url, "requested": p.requested, "fetch_ms": p.fetch_ms,
                })).collect::<Vec<_>>(),
            }),
            InstallEvent::Failed {
                project,
                message,
                elapsed_ms,
            } => json!({"project": project, "elapsed_ms": elapsed_ms,
                        "error_type": "dependency_install_failed", "error_message": message}),
        };
        if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
            d.extend(e);
        }
        data
    }
}

/// A listener for [`DepsEvent`]s; called on the install's task, so it must not block.
pub type DepsListener = Box<dyn Fn(&DepsEvent) + Send + Sync>;

impl Control {
    /// Adds a listener for wheel dependency installs.
    pub fn add_deps_listener(&self, listener: DepsListener) {
        crate::sync::lock(&self.deps_listeners).push(listener);
    }

    /// `text/x-python`: 422 naming each blocked import and its line (`PYTHON_BLOCKED_MODULES`).
    pub(super) async fn check_python_imports(&self, source: &[u8]) -> Result<(), ApiError> {
        match crate::python_policy::check(source, &self.config.python_blocked_modules).await {
            Ok(problems) if problems.is_empty() => Ok(()),
            Ok(problems) => Err(ApiError::InvalidPackage(problems)),
            Err(e) => {
                tracing::error!(error = %e, "python import check failed");
                Err(ApiError::Unavailable(format!(
                    "the Python import check could not run on this server: {e}"
                )))
            }
        }
    }

    /// `application/x-python`: the wheel's `Requires-Dist` installed next to where it will be
    /// extracted (vendored wheels first); 422 naming the dependency and pip's words when that
    /// fails. Every step goes to the deps listeners and the log.
    pub(super) async fn install_python_deps(
        &self,
        bytes: &[u8],
        info: &PackageInfo,
        w: &ForWorker,
    ) -> Result<Report, ApiError> {
        let meta =
            package::python_wheel::read_metadata(bytes, &self.limits).map_err(package_error)?;
        let vendored = if meta.requires_dist.is_empty() {
            Vec::new()
        } else {
            package::python_wheel::vendored_wheels(bytes, &self.limits).map_err(package_error)?
        };
        let target = package::python_wheel::deps_dir(&self.codes.package_dir(&info.sha256));
        let sink = |event: InstallEvent| {
            log_step(&meta.name, &info.sha256, &event);
            let ev = DepsEvent {
                worker_id: w.id.clone(),
                topic: w.topic.clone(),
                group: w.group.clone(),
                operation: w.operation,
                package: meta.name.clone(),
                package_version: meta.version.clone(),
                sha256: info.sha256.clone(),
                event,
            };
            for l in crate::sync::lock(&self.deps_listeners).iter() {
                l(&ev);
            }
        };
        let req = InstallRequest {
            requires: &meta.requires_dist,
            target: &target,
            vendored: &vendored,
        };
        crate::python_deps::install(&req, &self.config.python_deps, &sink)
            .await
            .map_err(|e| ApiError::InvalidPackage(vec![e.to_string()]))
    }
}

fn log_step(wheel: &str, sha256: &str, event: &InstallEvent) {
    match event {
        InstallEvent::Started { requires } => {
            tracing::info!(
                wheel,
                sha256,
                ?requires,
                "python wheel dependencies: installing"
            );
        }
        InstallEvent::Progress {
            project,
            step,
            elapsed_ms,
            ..
        } => {
            tracing::debug!(
                wheel,
                ?project,
                step,
                elapsed_ms,
                "python wheel dependencies"
            );
        }
        InstallEvent::Finished(r) => {
            let projects: Vec<String> = r
                .projects
                .iter()
                .map(|p| format!("{}=={} ({})", p.name, p.version, p.source.as_str()))
                .collect();
            tracing::info!(
                wheel,
                sha256,
                ?projects,
                reused = r.reused,
                elapsed_ms = r.elapsed_ms,
                "python wheel dependencies ready"
            );
        }
        InstallEvent::Failed {
            project, message, ..
        } => {
            tracing::warn!(wheel, ?project, error = %message, "python wheel dependencies refused");
        }
    }
}
