//! Step 2: the environment is reset to an allow-list.
//!
//! The supervisor already spawns with this list; the host enforces it again so a plugin never
//! sees a secret (a token, a database URL) that leaked into the supervisor's environment.

/// Variables kept from the inherited environment.
pub const ALLOWED: &[&str] = &[
    "PATH",
    "LANG",
    "TZ",
    "DOTNET_ROOT",
    "COMPlus_EnableDiagnostics",
    "DOTNET_EnableDiagnostics",
    "DOTNET_SYSTEM_GLOBALIZATION_INVARIANT",
];

/// Values forced whatever the supervisor passed: CoreCLR must open no diagnostics socket
/// (seccomp denies `socket`, and the FIFOs it leaves in /tmp outlive a SIGKILL). On CoreCLR
/// 3.1 only the `COMPlus_` spelling works, so both are set.
pub const FORCED: &[(&str, &str)] = &[
    ("COMPlus_EnableDiagnostics", "0"),
    ("DOTNET_EnableDiagnostics", "0"),
];

/// Removes every variable not in [`ALLOWED`] and sets [`FORCED`], and `TMPDIR` to the host's
/// private temp folder when it has one.
pub fn reset(tmp_dir: Option<&std::path::Path>) {
    let drop: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| !k.to_str().is_some_and(|k| ALLOWED.contains(&k)))
        .collect();
    for k in drop {
        // SAFETY: std::env::remove_var is unsafe because another thread might read the
        // environment at the same time; `sandbox::enter` checked the process has one thread.
        unsafe { std::env::remove_var(&k) };
    }
    for (k, v) in FORCED {
        // SAFETY: as above, single-threaded.
        unsafe { std::env::set_var(k, v) };
    }
    if let Some(t) = tmp_dir {
        // SAFETY: as above, single-threaded.
        unsafe { std::env::set_var("TMPDIR", t) };
    }
}
