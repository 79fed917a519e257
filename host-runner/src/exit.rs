//! Exit codes of the host-runner, for the supervisor's pool. A death by signal is reported by
//! `waitpid` as the signal instead. The codes sit in the sysexits range so they are unlikely
//! to be confused with a plugin calling `exit(1)` or `exit(3)`; a plugin can still exit with
//! any code, so after `Ready` the supervisor should trust a crash slot over the exit code.

/// Clean exit after `Shutdown`, or the supervisor closed its side of the ring.
pub const OK: u8 = 0;
/// Bad command line (the supervisor and host-runner binaries do not match).
pub const USAGE: u8 = 64;
/// The ring fd could not be mapped or has the wrong version.
pub const RING: u8 = 65;
/// A mandatory sandbox step failed; no plugin was opened.
pub const SANDBOX: u8 = 66;
/// The supervisor vanished (parent died before PR_SET_PDEATHSIG could cover it).
pub const PARENT_GONE: u8 = 67;
/// The ring failed while serving (corrupt frame, I/O error).
pub const PROTOCOL: u8 = 68;
