//! Step 3: resource limits.
//!
//! `RLIMIT_CORE` 0: a crashing plugin must not leave a core file holding other workers'
//! messages. `RLIMIT_NOFILE` bounds descriptors. `RLIMIT_AS` (optional) turns a plugin's
//! runaway allocation into a failed `malloc` rather than the kernel's OOM killer picking a
//! victim. Soft and hard limits are set alike; without CAP_SYS_RESOURCE (dropped in step 6)
//! a plugin cannot raise them again.

use std::io;

use super::SandboxError;

/// Default `RLIMIT_NOFILE` when the supervisor passes none.
pub const DEFAULT_NOFILE: u64 = 1024;

/// Applies the limits; a limit above the current hard limit is lowered to it.
pub fn apply(nofile: u64, address_space: Option<u64>) -> Result<(), SandboxError> {
    set(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    set(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile)?;
    if let Some(bytes) = address_space {
        set(libc::RLIMIT_AS, "RLIMIT_AS", bytes)?;
    }
    Ok(())
}

fn set(
    resource: libc::__rlimit_resource_t,
    name: &'static str,
    value: u64,
) -> Result<(), SandboxError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `cur`, a live local of that type.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(SandboxError::Rlimit {
            resource: name,
            value,
            source: io::Error::last_os_error(),
        });
    }
    let value = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads one rlimit from `new`, a live local of that type.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(SandboxError::Rlimit {
            resource: name,
            value,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
