//! The supervisor's async wait on a region's doorbell eventfd (docs/ring.md, "The runtime
//! reads its lanes").
//!
//! tokio cannot wait on a futex, but it can await an eventfd. The supervisor's reader task
//! drains every from-host ring without blocking, then [`BellWaiter::wait`]s: it announces in
//! the doorbell that it sleeps on the eventfd, re-checks every ring (the Dekker pair of
//! `Writer::publish`), and awaits readiness. A host writer that publishes while the
//! announcement stands writes the eventfd once; otherwise (the busy path) it makes no system
//! call. So a reply wakes the runtime thread directly, with no reader thread in between.
//!
//! The host is untrusted and holds the same eventfd: it can signal it without publishing
//! anything, in a tight loop. Each such wake-up finds nothing; after
//! [`SPURIOUS_BEFORE_THROTTLE`] of them in a row the waiter pauses [`THROTTLE`] before it
//! listens again, which bounds the supervisor's CPU for a flooding host to about one
//! wake-up per millisecond. A host that never signals only delays its own frames (its calls
//! still end at their deadlines); its death is still noticed through its pidfd, whose handler
//! marks the region closed and signals the eventfd from the supervisor's side.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{MultiReceiver, Region, RingError};

/// Wake-ups in a row that found no frame before the waiter starts pausing.
pub const SPURIOUS_BEFORE_THROTTLE: u32 = 8;
/// The pause before listening again after too many empty wake-ups.
pub const THROTTLE: Duration = Duration::from_millis(1);

/// Awaits one region's doorbell eventfd on the tokio runtime (supervisor side).
#[derive(Debug)]
pub struct BellWaiter {
    /// Registered with the runtime's epoll, except while paused (see [`BellWaiter::wait`]).
    fd: Registration,
    /// Wake-ups in a row after which a drain found no frame.
    empty: u32,
    /// Pauses taken because of empty wake-ups (a host signalling without publishing).
    throttled: u64,
}

#[derive(Debug)]
enum Registration {
    On(AsyncFd<OwnedFd>),
    Off(OwnedFd),
    /// Only while switching between the two.
    Gone,
}

/// Registers `fd` with the current runtime's I/O driver.
fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RingError> {
    // SAFETY: `register_with_interest` requires that the fd stays open and refers to the
    // same file description for the AsyncFd's whole life, and that `as_raw_fd` keeps
    // returning it: the OwnedFd (our own duplicate) is moved into the AsyncFd, nothing else
    // holds or closes that descriptor, and OwnedFd::as_raw_fd returns the fd it owns.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| RingError::Io {
        step: "register the doorbell eventfd with the tokio runtime (is I/O enabled?)",
        source: e.into(),
    })
}

impl BellWaiter {
    /// Registers (a duplicate of) `region`'s doorbell eventfd with the current runtime's I/O
    /// driver. Call inside a runtime with I/O enabled.
    pub fn new(region: &Region) -> Result<BellWaiter, RingError> {
        let bell = region.bell_fd().ok_or_else(|| RingError::Config {
            reason: "this region has no doorbell eventfd (a host-side region opened without \
                     one); read it with the blocking MultiReceiver instead"
                .into(),
        })?;
        let fd = bell.try_clone_to_owned().map_err(|source| RingError::Io {
            step: "dup the doorbell eventfd",
            source,
        })?;
        Ok(BellWaiter {
            fd: Registration::On(register(fd)?),
            empty: 0,
            throttled: 0,
        })
    }

    /// Takes the eventfd out of the runtime's epoll: while a flooding host is paused, its
    /// signals must not wake the runtime's I/O driver either (each would, edge-triggered).
    fn deregister(&mut self) {
        self.fd = match std::mem::replace(&mut self.fd, Registration::Gone) {
            Registration::On(afd) => Registration::Off(afd.into_inner()),
            other => other,
        };
    }

    /// The registered eventfd, registering it again after a pause.
    fn registered(&mut self) -> Result<&AsyncFd<OwnedFd>, RingError> {
        self.fd = match std::mem::replace(&mut self.fd, Registration::Gone) {
            Registration::Off(fd) => Registration::On(register(fd)?),
            other => other,
        };
        match &self.fd {
            Registration::On(afd) => Ok(afd),
            _ => Err(RingError::Io {
                step: "re-register the doorbell eventfd",
                source: io::Error::other("the eventfd was lost by an earlier failed registration"),
            }),
        }
    }

    /// Pauses taken so far because the host signalled without publishing.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Waits until a host writer signals (or a side is closed), after a drain of `rx` that
    /// took `drained` frames; returns at once when something arrived since that drain. The
    /// caller drains again either way (a wake-up may be spurious).
    pub async fn wait(&mut self, rx: &MultiReceiver, drained: usize) -> Result<(), RingError> {
        if drained == 0 {
            self.empty = self.empty.saturating_add(1);
        } else {
            self.empty = 0;
        }
        if self.empty > SPURIOUS_BEFORE_THROTTLE {
            // Only a host that signals without publishing gets here: a real frame resets the
            // count. The pause bounds what its signals cost us.
            self.throttled += 1;
            if self.throttled == 1 {
                tracing::warn!(
                    "a host signals its doorbell without sending frames; its wake-ups are \
                     throttled to one per {THROTTLE:?}"
                );
            }
            self.deregister();
            tokio::time::sleep(THROTTLE).await;
        }
        if !rx.announce_bell_sleep() {
            return Ok(());
        }
        let afd = match self.registered() {
            Ok(afd) => afd,
            Err(e) => {
                rx.end_bell_sleep();
                return Err(e);
            }
        };
        let ready = afd.readable().await;
        rx.end_bell_sleep();
        let mut guard = ready.map_err(|source| RingError::Io {
            step: "await the doorbell eventfd",
            source,
        })?;
        // Reset the counter, so the next await sleeps until the next signal. A signal that
        // arrives after this read raises a new readiness event (tokio keeps it: `clear_ready`
        // only clears the event this guard saw).
        let mut count = [0u8; 8];
        // SAFETY: read(2) writes at most 8 bytes into `count`, a live local of 8 bytes; the fd
        // is our own duplicate, open for the AsyncFd's life.
        let n = unsafe {
            libc::read(
                guard.get_inner().as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                // The host may have read its copy first (its own loss); anything else on
                // our own eventfd is unexpected but not a reason to stop reading the rings.
                tracing::debug!(error = %e, "reading the doorbell eventfd failed");
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
