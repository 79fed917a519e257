//! Which engines can run on this machine, and why not when one cannot: what `GET
//! /v1/engines` (and `workmanager engines`) reports, computed once at start.

use wm_shared::package::EngineKind;

use crate::runtime::{EngineInfo, language};

/// The engines and whether they can run here (a missing host-runner makes both unavailable).
pub fn engines(host_runner: &std::path::Path) -> Vec<EngineInfo> {
    let runner = if host_runner.is_file() {
        None
    } else {
        Some(format!(
            "the host-runner binary is missing at {} (build it, or set HOST_RUNNER_PATH)",
            host_runner.display()
        ))
    };
    crate::runtime::ENGINES
        .into_iter()
        .map(|engine| {
            let reason = runner.clone().or_else(|| match engine {
                EngineKind::Native => None,
                EngineKind::DotNet => dotnet_unavailable(host_runner),
                EngineKind::CSharpSource => dotnet_unavailable(host_runner)
                    .or_else(|| crate::csharp_source::roslyn_unavailable(host_runner)),
                EngineKind::Python | EngineKind::PythonWheel => python_unavailable(host_runner),
            });
            EngineInfo {
                mime: engine.mime().to_string(),
                language: language(engine).to_string(),
                available: reason.is_none(),
                reason,
            }
        })
        .collect()
}

/// Why the Python engine cannot run here, if it cannot: a host-runner built without the
/// `python` feature (it says which engines it has: `host-runner --engines`), or no python3
/// for the import check at create.
fn python_unavailable(host_runner: &std::path::Path) -> Option<String> {
    let out = match std::process::Command::new(host_runner)
        .arg("--engines")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            return Some(format!(
                "cannot run {} --engines: {e}",
                host_runner.display()
            ));
        }
    };
    let engines = String::from_utf8_lossy(&out.stdout);
    if !engines.lines().any(|l| l.trim() == "python") {
        return Some(format!(
            "this host-runner ({}) was built without the python engine (cargo feature `python`, \
             which links libpython3.11: apt-get install python3-dev, then rebuild); it has: {}",
            host_runner.display(),
            engines.split_whitespace().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

/// Why the .NET engine cannot run here, if it cannot: no runtime (every path searched is
/// named), or the bridge assembly missing next to the host-runner.
fn dotnet_unavailable(host_runner: &std::path::Path) -> Option<String> {
    if let Err(e) = wm_shared::dotnet::RuntimeSearch::from_env().find() {
        return Some(e.to_string());
    }
    let bridge = host_runner
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .join("dotnet")
        .join("Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll");
    if !bridge.is_file() {
        return Some(format!(
            "the .NET bridge is missing at {} (run host-runner/dotnet/build.sh {})",
            bridge.display(),
            bridge
                .parent()
                .map_or_else(String::new, |p| p.display().to_string())
        ));
    }
    None
}
