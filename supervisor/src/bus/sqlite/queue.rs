//! Who runs a command: the writer thread, or the caller itself when the writer is idle.
//!
//! Every command goes through one [`Sender`], which counts it as *pending* until the writer
//! thread has applied it (under the writer's lock). A publish, settle or completion that finds
//! the writer's lock free and nothing pending is applied on the calling thread instead
//! ([`Queue::write`]): the same `Writer::process` over the same state, so the same answers,
//! watchers and hand-outs, without the two thread wake-ups of a round trip to the writer
//! thread (docs/architecture.md, `bus/`: `queue.rs`). Nothing pending means no command sent earlier can
//! be overtaken. Under load the writer thread keeps group-committing: the caller also needs
//! the command's topics *quiet* (at most [`super::writer::INLINE_MAX_OPEN`] events open each), because with one
//! runtime thread the commands of concurrent requests would otherwise never meet in the
//! channel, each committed alone on the thread that parses the requests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::super::BusError;
use super::writer::Writer;
use super::{Cmd, Durability};
use crate::sync::try_lock;

/// When a lone write is committed on the caller's thread (`BUS_INLINE_COMMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InlineCommit {
    /// Only with [`Durability::Os`]: a commit without fsync is a few microseconds of the
    /// caller's thread, while an fsync would stall the async runtime for its duration.
    #[default]
    Os,
    /// With either durability.
    Always,
    /// Never: every command goes to the writer thread.
    Off,
}

impl InlineCommit {
    /// Whether lone writes go inline with `durability`.
    pub fn applies(self, durability: Durability) -> bool {
        match self {
            InlineCommit::Os => durability == Durability::Os,
            InlineCommit::Always => true,
            InlineCommit::Off => false,
        }
    }
}

/// The writer thread's command channel, counting what it has not applied yet.
#[derive(Clone)]
pub(super) struct Sender {
    tx: std::sync::mpsc::Sender<Cmd>,
    /// Commands sent and not yet applied (decremented by the writer thread under its lock).
    pending: Arc<AtomicUsize>,
}

impl Sender {
    pub fn new(tx: std::sync::mpsc::Sender<Cmd>, pending: Arc<AtomicUsize>) -> Sender {
        Sender { tx, pending }
    }

    /// Queues `cmd` for the writer thread; `Err` once it has stopped.
    pub fn send(&self, cmd: Cmd) -> Result<(), BusError> {
        let counted = !matches!(cmd, Cmd::Wake);
        if counted {
            // SYNC POINT with the load in `Queue::write`: counted before it can be received,
            // so a caller that sees 0 under the writer's lock knows nothing is in flight.
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
        self.tx.send(cmd).map_err(|_| {
            if counted {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            }
            BusError::Closed
        })
    }
}

/// The bus's side of the writer: its channel, and its state for inline writes.
pub(super) struct Queue {
    pub sender: Sender,
    state: Arc<Mutex<Writer>>,
    pending: Arc<AtomicUsize>,
    /// Set by the writer thread (under its lock) while it sleeps for up to a second.
    parked_long: Arc<AtomicBool>,
    inline: bool,
}

impl Queue {
    pub fn new(
        sender: Sender,
        state: Arc<Mutex<Writer>>,
        pending: Arc<AtomicUsize>,
        parked_long: Arc<AtomicBool>,
        inline: bool,
    ) -> Queue {
        Queue {
            sender,
            state,
            pending,
            parked_long,
            inline,
        }
    }

    /// Queues `cmd`, as [`Sender::send`].
    pub fn send(&self, cmd: Cmd) -> Result<(), BusError> {
        self.sender.send(cmd)
    }

    /// A publish, settle or completion: applied here and now when the writer is idle (its
    /// lock free, nothing pending), else queued. Either way its answer arrives on the
    /// command's own channel.
    pub fn write(&self, cmd: Cmd) -> Result<(), BusError> {
        if self.inline
            && self.pending.load(Ordering::SeqCst) == 0
            && let Some(mut w) = self.idle_writer()
            && self.pending.load(Ordering::SeqCst) == 0
            && w.is_quiet(&cmd)
        {
            if w.is_closed() {
                // Dropping the command drops its answer: the caller sees `Closed`.
                return Err(BusError::Closed);
            }
            w.apply_inline(cmd);
            // Attempt counts this left waiting are stored by the writer thread within
            // FLUSH_AFTER; wake it if it sleeps longer than that (once: it then sleeps short).
            if w.has_deferred() && self.parked_long.swap(false, Ordering::AcqRel) {
                drop(w);
                let _ = self.sender.send(Cmd::Wake);
            }
            return Ok(());
        }
        self.sender.send(cmd)
    }

    /// The writer's lock, if it can be had at once or after a few tries: with nothing
    /// pending, its thread holds it only for a moment (to pick its next timeout) or for an
    /// idle flush, and a lone write should not pay a round trip for that moment.
    fn idle_writer(&self) -> Option<MutexGuard<'_, Writer>> {
        for _ in 0..SPINS {
            if let Some(w) = try_lock(&self.state) {
                return Some(w);
            }
            std::hint::spin_loop();
        }
        None
    }
}

/// Tries at the writer's lock before a lone write is queued instead (about a microsecond).
const SPINS: usize = 64;
