//! `workmanager topics publish|watch`: the bus (`/v1/topics/{topic}/events`).
//!
//! `watch` tails a topic over SSE and resumes where it left off when the connection drops
//! (it sends the last sequence number it printed as `Last-Event-ID`), so a daemon restart
//! loses nothing inside the replay window.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{CliError, Client, api_error};
use super::output::{Output, cell, print_json};
use super::workers::{encode_segment, read_file};

/// `workmanager topics`.
#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Publish one event (or a batch from a file holding a JSON array).
    Publish(PublishArgs),
    /// Print a topic's events as they arrive (SSE), resuming after disconnects.
    Watch(WatchArgs),
}

/// `workmanager topics publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// A CloudEvent in structured JSON, or a JSON array of them (`-` reads stdin).
    #[arg(long, short = 'e', value_name = "FILE", conflicts_with = "data")]
    pub event: Option<PathBuf>,
    /// The event's data as JSON; an event around it is made.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// The `type` of the event made around `--data`.
    #[arg(long = "type", default_value = "workmanager.cli.publish")]
    pub ty: String,
    /// The `source` of the event made around `--data`.
    #[arg(long, default_value = "workmanager-cli")]
    pub source: String,
    /// The `id` of the event made around `--data` (default: a random UUID).
    #[arg(long)]
    pub id: Option<String>,
}

/// `workmanager topics watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The topic.
    pub topic: String,
    /// Start after this sequence number (replayed from the store, then live).
    #[arg(long, value_name = "SEQ", conflicts_with = "from_earliest")]
    pub after: Option<u64>,
    /// Start at the oldest event of the replay window.
    #[arg(long)]
    pub from_earliest: bool,
    /// Exit after this many events.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
}

/// Runs a `topics` subcommand.
pub async fn run(c: &Client, cmd: TopicsCommand) -> Result<(), CliError> {
    match cmd {
        TopicsCommand::Publish(a) => publish(c, a).await,
        TopicsCommand::Watch(a) => watch(c, a).await,
    }
}

async fn publish(c: &Client, a: PublishArgs) -> Result<(), CliError> {
    let (content_type, body) = match (&a.event, &a.data) {
        (Some(path), _) => {
            let bytes = read_file(path, "event")?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::usage(format!(
                    "the event file {} is not JSON: {e}",
                    path.display()
                ))
            })?;
            let ct = if v.is_array() {
                "application/cloudevents-batch+json"
            } else {
                "application/cloudevents+json"
            };
            (ct, v.to_string())
        }
        (None, Some(data)) => {
            let data: Value = serde_json::from_str(data)
                .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?;
            let ev = json!({
                "specversion": "1.0",
                "id": a.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                "source": a.source,
                "type": a.ty,
                "datacontenttype": "application/json",
                "data": data,
            });
            ("application/cloudevents+json", ev.to_string())
        }
        (None, None) => {
            return Err(CliError::usage(
                "give the event: --event FILE (a CloudEvent or an array of them) or --data JSON",
            ));
        }
    };
    let rb = c
        .request(
            Method::POST,
            &format!("/v1/topics/{}/events", encode_segment(&a.topic)),
        )
        .header("content-type", content_type)
        .body(body);
    let v = c.json(rb).await?;
    if c.output == Output::Json {
        print_json(&v);
    } else {
        let seqs: Vec<String> = v["seqs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        println!(
            "published {} event(s) on {}: seq {}",
            cell(&v["accepted"]),
            a.topic,
            seqs.join(", ")
        );
    }
    Ok(())
}

/// One SSE event being assembled.
#[derive(Default)]
struct Frame {
    id: Option<u64>,
    data: String,
}

async fn watch(c: &Client, a: WatchArgs) -> Result<(), CliError> {
    let path = format!("/v1/topics/{}/events", encode_segment(&a.topic));
    let mut last: Option<u64> = a.after;
    let mut printed = 0u64;
    let mut retry = Duration::from_millis(250);
    loop {
        let query = match (last, a.from_earliest) {
            (Some(seq), _) => format!("?after={seq}"),
            (None, true) => "?from=earliest".to_owned(),
            (None, false) => String::new(),
        };
        let rb = c
            .stream_request(&format!("{path}{query}"))
            .header("accept", "text/event-stream");
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) if printed > 0 || last.is_some() => {
                // Lost the daemon mid-tail: keep trying, resuming after the last event.
                eprintln!("workmanager: {}; retrying", c.transport_error(&e));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(c.transport_error(&e)),
        };
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        retry = Duration::from_millis(250);
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut frame = Frame::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    let f = std::mem::take(&mut frame);
                    if f.data.is_empty() {
                        continue;
                    }
                    if let Some(id) = f.id {
                        last = Some(id);
                    }
                    print_event(c.output, f.id, &f.data);
                    printed += 1;
                    if a.count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                } else if let Some(comment) = line.strip_prefix(':') {
                    if comment.trim_start().starts_with("lagged") {
                        eprintln!("workmanager: {}", comment.trim());
                    }
                } else if let Some(v) = line.strip_prefix("id:") {
                    frame.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !frame.data.is_empty() {
                        frame.data.push('\n');
                    }
                    frame.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        // The stream ended (daemon shutdown or network): resume after the last event.
        eprintln!("workmanager: the stream of {} ended; reconnecting", a.topic);
        tokio::time::sleep(retry).await;
    }
}

fn print_event(output: Output, seq: Option<u64>, data: &str) {
    let ev: Value = serde_json::from_str(data).unwrap_or_else(|_| json!(data));
    if output == Output::Json {
        // One JSON object per line, so scripts can read the tail as it comes.
        println!("{}", json!({"seq": seq, "event": ev}));
        return;
    }
    let payload = match &ev["data"] {
        Value::Null => ev["data_base64"].clone(),
        d => d.clone(),
    };
    println!(
        "{:>6}  {}  {}  {}",
        seq.map(|s| s.to_string()).unwrap_or_default(),
        cell(&ev["type"]),
        cell(&ev["id"]),
        cell(&payload)
    );
}
