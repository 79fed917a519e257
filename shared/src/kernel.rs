//! Facts about the running kernel that both binaries ask for.

/// The kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0, VERSION)`), or None
/// where the kernel has no Landlock (or it is not enabled).
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a NULL attribute and size 0 the call only returns the ABI version (or an
    // error); it reads no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).ok().filter(|v| *v > 0)
}
