//! Upload progress on a terminal: a large request body is sent in chunks, and a `\r` line on
//! stderr says how much has gone. Off a terminal (scripts, CI) the body is sent as is.

use std::io::Write as _;

use axum::body::Bytes;

/// Bodies smaller than this are sent without progress (they take no time worth showing).
const MIN_BYTES: usize = 1 << 20;
/// The chunk size: progress moves in steps of this.
const CHUNK: usize = 64 * 1024;

/// Attaches `body` to the request, with progress on stderr when it is a terminal.
pub fn body(
    rb: reqwest::RequestBuilder,
    body: Vec<u8>,
    label: &'static str,
) -> reqwest::RequestBuilder {
    if body.len() < MIN_BYTES || !super::client::stderr_is_terminal() {
        return rb.body(body);
    }
    let total = body.len();
    let all = Bytes::from(body);
    let chunks: Vec<Bytes> = (0..total)
        .step_by(CHUNK)
        .map(|start| all.slice(start..(start + CHUNK).min(total)))
        .collect();
    let mut sent = 0usize;
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        sent += chunk.len();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{label} {} / {} ({}%)",
            super::output::human_bytes(sent as u64),
            super::output::human_bytes(total as u64),
            sent * 100 / total.max(1)
        );
        if sent == total {
            let _ = writeln!(err);
        }
        Ok::<Bytes, std::io::Error>(chunk)
    }));
    rb.header(reqwest::header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(stream))
}
