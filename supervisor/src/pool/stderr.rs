//! A host's stderr, forwarded into the daemon log line by line, with bounded memory and rate.
//!
//! The pipe is read by a tokio task (no thread per host) in chunks; a line longer than
//! `HOST_STDERR_LINE_MAX_BYTES` is cut there with a marker and the rest of it is skipped as it
//! arrives, so 1 GiB without a newline costs one chunk buffer and one capped line. Lines over
//! `HOST_STDERR_LINES_PER_SECOND` (per host) are dropped, counted
//! (`workmanager_host_stderr_lines_dropped_total`) and summarised at most once a second.

use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{Quota, RateLimiter};
use tokio::io::AsyncReadExt;

use super::guard::Throttled;

/// Limits on what a host may write to stderr.
#[derive(Debug, Clone, Copy)]
pub struct StderrLimits {
    /// `HOST_STDERR_LINE_MAX_BYTES`: longer lines are cut.
    pub line_max_bytes: usize,
    /// `HOST_STDERR_LINES_PER_SECOND`: per host; more are dropped.
    pub lines_per_second: u32,
}

impl Default for StderrLimits {
    fn default() -> Self {
        StderrLimits {
            line_max_bytes: 4096,
            lines_per_second: 200,
        }
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);
static TRUNCATED: AtomicU64 = AtomicU64::new(0);

/// (lines dropped over the rate, lines cut at the length limit), over all hosts.
pub fn counters() -> (u64, u64) {
    (
        DROPPED.load(Ordering::Relaxed),
        TRUNCATED.load(Ordering::Relaxed),
    )
}

/// Starts forwarding `stderr` of host `host_id` (pid `pid`) to the log until the pipe closes.
/// Needs a tokio runtime; without one (or if the pipe cannot be registered) stderr is closed,
/// which the host only notices as failed writes.
pub fn forward(host_id: &str, pid: i32, fd: OwnedFd, limits: StderrLimits) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(host = host_id, pid, error = %e, "cannot read the host's stderr; it is discarded");
            return;
        }
    };
    let host = host_id.to_string();
    tokio::spawn(async move { read_lines(pipe, &host, pid, limits).await });
}

async fn read_lines(
    mut pipe: tokio::net::unix::pipe::Receiver,
    host: &str,
    pid: i32,
    limits: StderrLimits,
) {
    let rate = RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(limits.lines_per_second).unwrap_or(NonZeroU32::MIN),
    ));
    let summary = Throttled::new();
    let mut cutter = LineCutter::new(limits.line_max_bytes);
    let mut buf = vec![0u8; 8192];
    let mut emit = |line: &[u8], cut: bool| {
        if cut {
            TRUNCATED.fetch_add(1, Ordering::Relaxed);
        }
        if rate.check().is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = summary.note() {
                tracing::warn!(
                    host,
                    pid,
                    dropped = n,
                    "host stderr lines over HOST_STDERR_LINES_PER_SECOND dropped"
                );
            }
            return;
        }
        let text = String::from_utf8_lossy(line);
        if cut {
            tracing::info!(
                host,
                pid,
                "host-runner: {text} [line cut at HOST_STDERR_LINE_MAX_BYTES={}; the rest skipped]",
                limits.line_max_bytes
            );
        } else {
            tracing::info!(host, pid, "host-runner: {text}");
        }
    };
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => cutter.push(&buf[..n], &mut emit),
        }
    }
    cutter.finish(&mut emit);
}

/// Splits a byte stream into lines of at most `max` bytes. A longer line is handed out once,
/// cut at `max` (flag `true`), and the rest of it up to the next newline is skipped without
/// being stored.
pub struct LineCutter {
    max: usize,
    line: Vec<u8>,
    skipping: bool,
}

impl LineCutter {
    pub fn new(max: usize) -> LineCutter {
        LineCutter {
            max: max.max(1),
            line: Vec::new(),
            skipping: false,
        }
    }

    /// Feeds a chunk; calls `emit(line, cut)` for every line it completes.
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            chunk = rest;
            if !self.skipping {
                let room = self.max - self.line.len();
                if part.len() > room {
                    self.line.extend_from_slice(&part[..room]);
                    emit(&self.line, true);
                    self.line.clear();
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if ended {
                if !self.skipping {
                    emit(&self.line, false);
                }
                self.line.clear();
                self.skipping = false;
            }
        }
    }

    /// The end of the stream: a last line without a newline is handed out.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.skipping && !self.line.is_empty() {
            emit(&self.line, false);
        }
        self.line.clear();
        self.skipping = false;
    }

    /// Bytes held right now (at most `max`).
    pub fn held(&self) -> usize {
        self.line.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: usize, chunks: &[&[u8]]) -> (Vec<(String, bool)>, usize) {
        let mut c = LineCutter::new(max);
        let mut out = Vec::new();
        let mut most = 0;
        for ch in chunks {
            c.push(ch, &mut |l, cut| {
                out.push((String::from_utf8_lossy(l).into_owned(), cut))
            });
            most = most.max(c.held());
        }
        c.finish(&mut |l, cut| out.push((String::from_utf8_lossy(l).into_owned(), cut)));
        (out, most)
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let (out, _) = run(16, &[b"ab", b"c\nde", b"f\n\nlast"]);
        let lines: Vec<&str> = out.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lines, vec!["abc", "def", "", "last"]);
        assert!(out.iter().all(|(_, cut)| !cut));
    }

    #[test]
    fn a_long_line_is_cut_once_and_the_rest_skipped_in_bounded_memory() {
        let big = vec![b'x'; 1 << 20];
        let mut chunks: Vec<&[u8]> = vec![b"start "];
        for _ in 0..64 {
            chunks.push(&big);
        }
        chunks.push(b"tail\nnext\n");
        let (out, most) = run(8, &chunks);
        assert_eq!(
            out,
            vec![("start xx".to_string(), true), ("next".to_string(), false)]
        );
        assert!(most <= 8, "held {most} bytes");
    }
}
