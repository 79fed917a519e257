//! A blocking Server-Sent-Events client for the tests: subscribes to
//! `GET /v1/topics/{topic}/events` (from now on, or resuming: [`Sse::resume`]) and hands each
//! event's `data` (a structured CloudEvent) and `id` (its bus sequence number) to the test
//! through a channel. A reader thread decodes HTTP/1.1 chunked framing and SSE lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A live subscription; dropping it closes the connection.
pub struct Sse {
    rx: mpsc::Receiver<(Option<u64>, serde_json::Value)>,
    last_id: std::cell::Cell<Option<u64>>,
    stream: TcpStream,
    topic: String,
    seen: std::cell::RefCell<Vec<serde_json::Value>>,
    lagged: Arc<AtomicU64>,
}

impl Sse {
    /// Subscribes to `topic` on the daemon at `base_url` (`http://127.0.0.1:port`).
    /// Returns once the server answered 200, so events published afterwards are seen.
    pub fn subscribe(base_url: &str, topic: &str) -> Sse {
        Sse::resume(base_url, topic, "", None)
    }

    /// [`Sse::subscribe`] with extra request headers (e.g. `authorization`).
    pub fn subscribe_with(base_url: &str, topic: &str, headers: &[(&str, &str)]) -> Sse {
        match Sse::open(base_url, topic, "", None, headers) {
            Ok(s) => s,
            Err(status) => panic!("SSE subscription to {topic} refused: {status}"),
        }
    }

    /// Subscribes with a query (`after=5`, `from=earliest`; empty for none) and an optional
    /// `Last-Event-ID` header. Panics unless the server answers 200.
    pub fn resume(base_url: &str, topic: &str, query: &str, last_event_id: Option<u64>) -> Sse {
        match Sse::try_resume(base_url, topic, query, last_event_id) {
            Ok(s) => s,
            Err(status) => panic!("SSE subscription to {topic} refused: {status}"),
        }
    }

    /// Like [`Sse::resume`], but returns the status line when the server refuses.
    pub fn try_resume(
        base_url: &str,
        topic: &str,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, String> {
        Sse::open(base_url, topic, query, last_event_id, &[])
    }

    fn open(
        base_url: &str,
        topic: &str,
        query: &str,
        last_event_id: Option<u64>,
        headers: &[(&str, &str)],
    ) -> Result<Sse, String> {
        let addr = base_url
            .strip_prefix("http://")
            .unwrap_or(base_url)
            .trim_end_matches('/');
        let mut stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connecting to {addr} for SSE: {e}"));
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let last = last_event_id.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            stream,
            "GET /v1/topics/{topic}/events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}{extra}\r\n"
        )
        .unwrap_or_else(|e| panic!("sending the SSE request: {e}"));
        let read_half = stream
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning the SSE socket: {e}"));
        let mut reader = BufReader::new(read_half);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .unwrap_or_else(|e| panic!("reading the SSE status line: {e}"));
        if !status.contains(" 200") {
            return Err(status.trim().to_string());
        }
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("reading SSE headers: {e}"));
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let (tx, rx) = mpsc::channel();
        let lagged = Arc::new(AtomicU64::new(0));
        let l = lagged.clone();
        std::thread::spawn(move || read_events(reader, chunked, tx, l));
        Ok(Sse {
            rx,
            last_id: std::cell::Cell::new(None),
            stream,
            topic: topic.to_string(),
            seen: Default::default(),
            lagged,
        })
    }

    /// The `id:` (bus sequence number) of the event [`Sse::next`] returned last.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id.get()
    }

    /// The next event and its `id:` within `timeout`.
    pub fn next_with_id(&self, timeout: Duration) -> Option<(u64, serde_json::Value)> {
        let v = self.next(timeout)?;
        Some((self.last_id.get().unwrap_or(0), v))
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Events the server said it skipped because this subscriber lagged behind
    /// (`: lagged: n events skipped` comments): a subscription that lagged missed events.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::SeqCst)
    }

    /// The next event within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<serde_json::Value> {
        let (id, v) = self.rx.recv_timeout(timeout).ok()?;
        self.last_id.set(id);
        self.seen.borrow_mut().push(v.clone());
        Some(v)
    }

    /// Waits for the first event matching `pred`; panics with everything seen on the topic if
    /// none comes within `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!(
                    "no event on '{}' matched ({what}) within {timeout:?}; seen: {:#?}",
                    self.topic,
                    self.seen.borrow()
                ),
            }
        }
    }

    /// Events that arrive within `window` (for "nothing more arrives" checks).
    pub fn drain(&self, window: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(v) = self.next(deadline.saturating_duration_since(Instant::now())) {
            out.push(v);
        }
        out
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn read_events(
    mut reader: BufReader<TcpStream>,
    chunked: bool,
    tx: mpsc::Sender<(Option<u64>, serde_json::Value)>,
    lagged: Arc<AtomicU64>,
) {
    let mut body: Vec<u8> = Vec::new();
    let mut data = String::new();
    let mut id: Option<u64> = None;
    loop {
        // Pull the next piece of the body (one chunk, or whatever is there).
        let piece = if chunked {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
                return;
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or(0);
            if size == 0 {
                return;
            }
            let mut buf = vec![0; size + 2];
            if reader.read_exact(&mut buf).is_err() {
                return;
            }
            buf.truncate(size);
            buf
        } else {
            let mut buf = vec![0; 4096];
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.truncate(n);
                    buf
                }
            }
        };
        body.extend_from_slice(&piece);
        while let Some(pos) = body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = body.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(c) = line
                .strip_prefix(": lagged: ")
                .or(line.strip_prefix(":lagged: "))
            {
                let n: u64 = c
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                lagged.fetch_add(n.max(1), Ordering::SeqCst);
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if line.is_empty() && !data.is_empty() {
                if let Ok(v) = serde_json::from_str(&data)
                    && tx.send((id.take(), v)).is_err()
                {
                    return;
                }
                data.clear();
            }
        }
    }
}
