//! Step 8 (best effort): Landlock.
//!
//! Handles every filesystem write right and allows them only beneath the host's private temp
//! folder (`TMPDIR`), so a plugin can read (it must: its own library, libc, the .NET runtime)
//! but not create, change or delete a file anywhere else, `/proc/<pid>/mem` of another
//! process included. Where the kernel supports them it
//! also denies TCP bind/connect and scopes signals and abstract Unix sockets to the sandbox,
//! so a plugin running as the supervisor's uid cannot signal the supervisor. The host itself
//! writes nothing after start-up: library copies live in memfds (see `engine::native`).
//!
//! Best effort: on a kernel without Landlock the step is skipped and logged.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::log;

/// The newest ABI this code was written and tested against.
const ABI_TARGET: ABI = ABI::V6;

/// Applies the ruleset to the calling thread (and the threads it starts later). Returns the
/// kernel's Landlock ABI if any of it took effect.
pub fn restrict(tmp_dir: Option<&std::path::Path>) -> Option<u32> {
    let result = landlock::Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(write_rights())
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_TARGET)))
        .and_then(|r| r.scope(Scope::from_all(ABI_TARGET)))
        .and_then(|r| r.create())
        .and_then(|r| match tmp_dir.map(PathFd::new) {
            Some(Ok(fd)) => r.add_rule(PathBeneath::new(fd, write_rights())),
            Some(Err(e)) => {
                log(&format!(
                    "the private temp folder cannot be opened ({e}); it stays read-only"
                ));
                Ok(r)
            }
            None => Ok(r),
        })
        // `restrict_self` also sets no_new_privs; `enter` has done so already.
        .and_then(|r| r.no_new_privs(true).restrict_self());
    match result {
        Ok(status) => match status.ruleset {
            RulesetStatus::FullyEnforced => Some(wm_shared::kernel::landlock_abi().unwrap_or(6)),
            RulesetStatus::PartiallyEnforced => {
                log(
                    "landlock partially enforced (older kernel ABI): filesystem writes denied where supported",
                );
                Some(wm_shared::kernel::landlock_abi().unwrap_or(1))
            }
            RulesetStatus::NotEnforced => {
                log("landlock skipped (best effort): the kernel does not support it");
                None
            }
        },
        Err(e) => {
            log(&format!("landlock skipped (best effort): {e}"));
            None
        }
    }
}

/// The write rights handled, and so denied outside the temp folder.
fn write_rights() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_write(ABI_TARGET)
}
