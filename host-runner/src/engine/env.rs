//! `VIRTUFIN_WORKER_ID` and `VIRTUFIN_WORKER_TOPIC` while a worker loads, in every engine.
//!
//! The original sets both before it loads a worker's code (the native `dlopen` constructors,
//! the .NET assembly load and the worker's constructor) and restores them afterwards; plugins
//! read them to learn who they are while they initialise.

use std::sync::Mutex;
use wm_shared::sync::Locked as _;

use super::LoadSpec;

/// Serialises the environment changes around loads: setenv is not thread-safe, and two loads
/// must not see each other's worker id.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` (a worker's load) with the worker's id and topic in the environment.
pub fn with_worker_env<T>(spec: &LoadSpec, f: impl FnOnce() -> T) -> T {
    with_env(
        &[
            ("VIRTUFIN_WORKER_ID", spec.worker_id.as_str()),
            ("VIRTUFIN_WORKER_TOPIC", spec.topic.as_str()),
        ],
        f,
    )
}

/// Sets `vars` for the duration of `f`, then restores the previous values.
fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _lock = ENV_LOCK.locked();
    let saved: Vec<_> = vars
        .iter()
        .map(|(k, _)| (*k, std::env::var_os(k)))
        .collect();
    for (k, v) in vars {
        // SAFETY: setenv races with concurrent getenv in other threads. Loads are serialised
        // by ENV_LOCK; a plugin reading the environment from another worker's thread at this
        // very moment is the same hazard the original engine has (it sets these variables
        // the same way), and the values only change during a load.
        unsafe { std::env::set_var(k, v) };
    }
    let out = f();
    for (k, v) in saved {
        match v {
            // SAFETY: as above.
            Some(v) => unsafe { std::env::set_var(k, v) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(k) },
        }
    }
    out
}
