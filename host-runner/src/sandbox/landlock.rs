//! Step 8 (best effort): Landlock.
//!
//! Handles every filesystem write right and allows none of them, so a plugin can read (it
//! must: its own library, libc, the .NET runtime) but not create, change or delete a file
//! anywhere, `/proc/<pid>/mem` of another process included. Where the kernel supports them it
//! also denies TCP bind/connect and scopes signals and abstract Unix sockets to the sandbox,
//! so a plugin running as the supervisor's uid cannot signal the supervisor. The host itself
//! writes nothing after start-up: library copies live in memfds (see `engine::native`).
//!
//! Best effort: on a kernel without Landlock the step is skipped and logged.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};

use super::log;

/// The newest ABI this code was written and tested against.
const ABI_TARGET: ABI = ABI::V6;

/// Applies the ruleset to the calling thread (and the threads it starts later). Returns
/// whether any of it took effect.
pub fn restrict() -> bool {
    let result = landlock::Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_write(ABI_TARGET))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_TARGET)))
        .and_then(|r| r.scope(Scope::from_all(ABI_TARGET)))
        .and_then(|r| r.create())
        // `restrict_self` also sets no_new_privs; `enter` has done so already.
        .and_then(|r| r.no_new_privs(true).restrict_self());
    match result {
        Ok(status) => match status.ruleset {
            RulesetStatus::FullyEnforced => true,
            RulesetStatus::PartiallyEnforced => {
                log(
                    "landlock partially enforced (older kernel ABI): filesystem writes denied where supported",
                );
                true
            }
            RulesetStatus::NotEnforced => {
                log("landlock skipped (best effort): the kernel does not support it");
                false
            }
        },
        Err(e) => {
            log(&format!("landlock skipped (best effort): {e}"));
            false
        }
    }
}
