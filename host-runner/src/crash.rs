//! The fatal-signal handler: says which worker and which message killed the host.
//!
//! Every thread that calls plugin code marks the call with [`enter_call`] (a const-initialised
//! thread-local, so reading it from a signal handler touches no lazy initialisation). On
//! SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT or SIGSYS the handler, running on the thread's
//! alternate stack (so a stack overflow is caught too; see [`AltStack`]), copies that mark
//! into a crash slot of the ring region ([`CrashSink`]), restores the default action and
//! re-raises, so the supervisor sees the real signal through `waitpid`.
//!
//! Async-signal-safety: the handler makes only these calls: `gettid` and `getpid` (raw
//! syscalls), `sigaction` (to restore `SIG_DFL`), `tgkill` (to re-raise), plus atomic and
//! plain stores into the shared region and reads of its own thread-local. No allocation, no
//! lock, no formatting, no unwinding.
//!
//! A plugin calling `exit()` during a call is recorded too, from an `atexit` hook, with
//! signal 0 (the process then exits with the plugin's code).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{Ordering, compiler_fence};

/// Longest worker id kept in the thread-local mark (the ring's crash slot may keep fewer).
pub const WORKER_ID_BYTES: usize = 88;

/// The signals the handler catches.
pub const FATAL_SIGNALS: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGSYS,
];

/// Where a crash is recorded: the ring region's crash slots in the binary.
pub trait CrashSink: Sync {
    /// Records one crash; must be async-signal-safe (atomics and plain stores only).
    /// Returns false if no slot was free.
    fn record(&self, signal: i32, tid: i32, worker_id: &[u8], msg_id: u64, fault_addr: u64)
    -> bool;
}

static SINK: OnceLock<&'static dyn CrashSink> = OnceLock::new();

struct CallMark {
    active: Cell<bool>,
    len: Cell<usize>,
    worker: Cell<[u8; WORKER_ID_BYTES]>,
    msg_id: Cell<u64>,
}

thread_local! {
    // const-initialised and without Drop: accessing it never allocates or registers a
    // destructor, which is what makes it readable from a signal handler.
    static MARK: CallMark = const {
        CallMark {
            active: Cell::new(false),
            len: Cell::new(0),
            worker: Cell::new([0; WORKER_ID_BYTES]),
            msg_id: Cell::new(0),
        }
    };
}

/// Marks the calling thread as running plugin code for `worker_id` / `msg_id` (0 for a load
/// or unload) until the guard drops.
pub fn enter_call(worker_id: &str, msg_id: u64) -> CallGuard {
    let prev = current();
    set(worker_id.as_bytes(), msg_id);
    CallGuard { prev }
}

/// Restores the previous mark (none, usually) when dropped.
pub struct CallGuard {
    prev: Option<(Vec<u8>, u64)>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        match self.prev.take() {
            Some((w, m)) => set(&w, m),
            None => {
                let _ = MARK.try_with(|m| m.active.set(false));
            }
        }
    }
}

/// The calling thread's current mark: (worker id, msg id), if a call is running.
pub fn current() -> Option<(Vec<u8>, u64)> {
    MARK.try_with(|m| {
        m.active
            .get()
            .then(|| (m.worker.get()[..m.len.get()].to_vec(), m.msg_id.get()))
    })
    .ok()
    .flatten()
}

/// The calling thread's current message id, 0 if none (for callbacks).
pub fn current_msg_id() -> u64 {
    MARK.try_with(|m| if m.active.get() { m.msg_id.get() } else { 0 })
        .unwrap_or(0)
}

fn set(worker_id: &[u8], msg_id: u64) {
    let _ = MARK.try_with(|m| {
        m.active.set(false);
        // The handler runs on this same thread: a compiler fence is enough to keep it from
        // seeing `active` before the fields it guards.
        compiler_fence(Ordering::SeqCst);
        let n = worker_id.len().min(WORKER_ID_BYTES);
        let mut buf = [0u8; WORKER_ID_BYTES];
        buf[..n].copy_from_slice(&worker_id[..n]);
        m.worker.set(buf);
        m.len.set(n);
        m.msg_id.set(msg_id);
        compiler_fence(Ordering::SeqCst);
        m.active.set(true);
    });
}

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum CrashError {
    #[error("the crash handler is already installed")]
    AlreadyInstalled,
    #[error("sigaction({signal}) failed: {source}")]
    Sigaction {
        signal: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the alternate signal stack failed at {step}: {source}")]
    AltStack {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("registering the exit hook failed")]
    Atexit,
}

/// Installs the handler for [`FATAL_SIGNALS`] (process-wide) and the `atexit` hook, recording
/// into `sink`. Call once, before any plugin is opened.
pub fn install(sink: &'static dyn CrashSink) -> Result<(), CrashError> {
    SINK.set(sink).map_err(|_| CrashError::AlreadyInstalled)?;
    for &signal in &FATAL_SIGNALS {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags) before we fill
        // in the fields sigaction(2) reads.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fatal_signal as *const () as usize;
        // SA_RESETHAND: the kernel restores SIG_DFL as it delivers, so the re-raise at the end
        // of the handler kills even though the native seccomp profile refuses a later
        // sigaction on these signals.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
        // SAFETY: sa_mask is a live sigset_t inside `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised; the handler has the SA_SIGINFO signature;
        // a null old-action pointer is allowed.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(CrashError::Sigaction {
                signal,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // SAFETY: atexit registers a function pointer of the right type; it stays valid for the
    // life of the process (a plain fn).
    if unsafe { libc::atexit(on_exit) } != 0 {
        return Err(CrashError::Atexit);
    }
    Ok(())
}

extern "C" fn on_fatal_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _ucontext: *mut libc::c_void,
) {
    // Only faults carry a meaningful si_addr; for a seccomp SIGSYS the slot carries the
    // syscall number instead (tagged, see `wm_shared::ring::CrashRecord::forbidden_syscall`).
    let fault_addr = match signal {
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE if !info.is_null() => {
            // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler, and for
            // these signals si_addr is the active union member.
            unsafe { (*info).si_addr() as u64 }
        }
        // SAFETY: as above; `seccomp_syscall` reads the SIGSYS union member only when
        // si_code says the signal came from seccomp.
        libc::SIGSYS if !info.is_null() => unsafe { seccomp_syscall(info) }
            .map(wm_shared::ring::CrashRecord::tag_syscall)
            .unwrap_or(0),
        _ => 0,
    };
    record(signal, fault_addr);

    // Restore the default action and re-raise: the signal is blocked while this handler runs,
    // so it is delivered (and kills the process with the real signal) as soon as we return.
    // A hardware fault would also simply re-fault on return.
    // SAFETY: as in `install`, a zeroed sigaction with SIG_DFL (0) is valid.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigaction is async-signal-safe; `dfl` is initialised.
    unsafe { libc::sigaction(signal, &dfl, std::ptr::null_mut()) };
    // SAFETY: getpid/gettid/tgkill take integers only and are async-signal-safe; the
    // seccomp filter allows tgkill to our own pid.
    unsafe {
        let pid = libc::getpid();
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        libc::syscall(libc::SYS_tgkill, pid, tid, signal);
    }
    // When the host is pid 1 of its PID namespace, a signal it sends itself with the default
    // action is ignored. A hardware fault re-faults on return and the
    // kernel's forced signal kills us with the real signal; a sent signal (abort()'s
    // SIGABRT, a raise()) or a seccomp SIGSYS would not come back (the forbidden syscall
    // would just return), so end the process here with the shell's code for the signal.
    // Elsewhere the re-raised signal is pending (blocked while this handler runs) and kills
    // us as we return, so this applies to pid 1 only.
    // SAFETY: reads si_code from the kernel's siginfo (valid for an SA_SIGINFO handler).
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    // SAFETY: getpid has no preconditions.
    let init = unsafe { libc::getpid() } == 1;
    if init && (sent || matches!(signal, libc::SIGSYS | libc::SIGABRT)) {
        // SAFETY: exit_group takes an integer and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, 128 + signal) };
    }
}

/// `si_syscall` of a SIGSYS raised by a seccomp `SECCOMP_RET_TRAP`, or None for a SIGSYS
/// sent by `kill`/`raise`.
///
/// # Safety
/// `info` must point at the siginfo_t the kernel passed to an SA_SIGINFO handler for SIGSYS.
unsafe fn seccomp_syscall(info: *const libc::siginfo_t) -> Option<i32> {
    const SYS_SECCOMP: i32 = 1;
    // SAFETY: the caller's promise; si_code is in the common header of every siginfo_t.
    if unsafe { (*info).si_code } != SYS_SECCOMP {
        return None;
    }
    // The kernel's layout for SIGSYS (include/uapi/asm-generic/siginfo.h): after si_signo,
    // si_errno, si_code and padding to 16 bytes comes `_sigsys { void *_call_addr; int
    // _syscall; unsigned int _arch; }`, so _syscall is at byte 16 + size of a pointer.
    const SYSCALL_OFFSET: usize = 16 + size_of::<*const u8>();
    // SAFETY: siginfo_t is 128 bytes; the offset is inside it and aligned for i32.
    Some(unsafe {
        info.cast::<u8>()
            .add(SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    })
}

extern "C" fn on_exit() {
    // Only an exit from inside a plugin call is worth a record; the host's own exits happen
    // on the main thread, which never carries a mark.
    let active = MARK.try_with(|m| m.active.get()).unwrap_or(false);
    if active {
        record(0, 0);
    }
}

/// Async-signal-safe: reads the thread-local mark, writes the sink.
fn record(signal: i32, fault_addr: u64) {
    let Some(sink) = SINK.get() else {
        return;
    };
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let mut buf = [0u8; WORKER_ID_BYTES];
    let mut len = 0;
    let mut msg_id = 0;
    let _ = MARK.try_with(|m| {
        if m.active.get() {
            buf = m.worker.get();
            len = m.len.get().min(WORKER_ID_BYTES);
            msg_id = m.msg_id.get();
        }
    });
    sink.record(signal, tid, &buf[..len], msg_id, fault_addr);
}

/// An alternate signal stack for the current thread, so the handler can run after a stack
/// overflow. Each thread that calls plugin code holds one for its lifetime.
pub struct AltStack {
    map: *mut libc::c_void,
    len: usize,
}

/// Usable size of each alternate stack.
pub const ALT_STACK_BYTES: usize = 64 * 1024;

impl AltStack {
    /// Maps a stack with a guard page below it and makes it this thread's alternate stack.
    pub fn install() -> Result<AltStack, CrashError> {
        // SAFETY: sysconf takes an integer only.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = ALT_STACK_BYTES + page;
        // SAFETY: an anonymous private mapping at a kernel-chosen address; no existing
        // memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(CrashError::AltStack {
                step: "mmap",
                source: std::io::Error::last_os_error(),
            });
        }
        // The guard page: an overflow of the handler itself faults instead of scribbling.
        // SAFETY: [map, map+page) lies inside the mapping just created.
        unsafe { libc::mprotect(map, page, libc::PROT_NONE) };
        let stack = libc::stack_t {
            // SAFETY: map + page stays inside the mapping (len = page + ALT_STACK_BYTES).
            ss_sp: unsafe { map.cast::<u8>().add(page) }.cast(),
            ss_flags: 0,
            ss_size: ALT_STACK_BYTES,
        };
        // SAFETY: `stack` describes memory we own for as long as this AltStack lives; Drop
        // disables it before unmapping.
        if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
            let source = std::io::Error::last_os_error();
            // SAFETY: unmaps the mapping created above, not registered anywhere.
            unsafe { libc::munmap(map, len) };
            return Err(CrashError::AltStack {
                step: "sigaltstack",
                source,
            });
        }
        Ok(AltStack { map, len })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling the alternate stack of this thread (AltStack is !Send, so this is
        // the thread that installed it) before its memory goes away; we are not on it.
        unsafe { libc::sigaltstack(&disable, std::ptr::null_mut()) };
        // SAFETY: the mapping was created in `install` with this length and is no longer
        // registered as a signal stack.
        unsafe { libc::munmap(self.map, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_set_inside_a_call_and_cleared_after() {
        assert_eq!(current(), None);
        {
            let _g = enter_call("worker-1", 42);
            assert_eq!(current(), Some((b"worker-1".to_vec(), 42)));
            assert_eq!(current_msg_id(), 42);
        }
        assert_eq!(current(), None);
        assert_eq!(current_msg_id(), 0);
    }

    #[test]
    fn long_worker_ids_are_truncated_not_overflowed() {
        let long = "w".repeat(500);
        let _g = enter_call(&long, 1);
        let (w, _) = current().expect("mark set");
        assert_eq!(w.len(), WORKER_ID_BYTES);
    }

    #[test]
    fn an_alt_stack_installs_and_uninstalls() {
        let s = AltStack::install().expect("altstack");
        drop(s);
    }
}
