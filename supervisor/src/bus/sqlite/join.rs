//! The join window's source of commands: while a group commit whose events went out early
//! (`flow::hand_out_early`) keeps its transaction open, the writer thread takes the writes
//! that arrive meanwhile (above all those events' completions) into the same transaction,
//! so a quick plugin's event costs one fsync'd commit instead of two (`BUS_JOIN_WINDOW_US`).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use super::Cmd;

/// The writer thread's channel, lent to one group commit.
pub(super) struct Join<'a> {
    rx: &'a Receiver<Cmd>,
    /// Commands taken from the channel that the window does not apply (not writes): they
    /// start the next batch, and while any waits nothing later is joined (arrival order).
    carry: &'a mut VecDeque<Cmd>,
    /// Commands taken from the channel and applied: no longer pending once this batch ends.
    pub taken: usize,
}

impl<'a> Join<'a> {
    pub fn new(rx: &'a Receiver<Cmd>, carry: &'a mut VecDeque<Cmd>) -> Join<'a> {
        Join {
            rx,
            carry,
            taken: 0,
        }
    }

    /// The next write that arrives before `deadline`, with whatever writes are queued right
    /// behind it (up to `room` events); empty at the deadline, or once a command that is not
    /// a write arrives (it is carried to the next batch, and nothing after it joins).
    pub fn next(&mut self, deadline: Instant, room: usize) -> Vec<Cmd> {
        let mut out = Vec::new();
        if !self.carry.is_empty() {
            return out;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let first = match self.rx.recv_timeout(wait) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return out,
        };
        let mut weight = 0;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            if matches!(cmd, Cmd::Wake) {
                // Only a nudge to look at the timers, which the end of this batch does.
            } else if is_write(&cmd) {
                weight += cmd_weight(&cmd);
                self.taken += 1;
                out.push(cmd);
            } else {
                self.carry.push_back(cmd);
                break;
            }
            if weight >= room {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        out
    }
}

/// Whether `c` is written in the group commit (what a commit delay gathers and a join
/// window joins).
pub(super) fn is_write(c: &Cmd) -> bool {
    matches!(
        c,
        Cmd::Append { .. } | Cmd::Settle { .. } | Cmd::Complete(_)
    )
}

/// How much of the batch limit a command uses.
pub(super) fn cmd_weight(c: &Cmd) -> usize {
    match c {
        Cmd::Append { events, .. } => events.len().max(1),
        _ => 1,
    }
}
