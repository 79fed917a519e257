//! `workmanager hosts`, `workmanager engines` and `workmanager dead-letters ls|requeue`.

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{CliError, Client};
use super::output::{Output, Table, cell, human_bytes, print_json};
use super::workers::encode_segment;

/// `workmanager dead-letters`.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// List the dead letters of a topic (`orders` or `orders-dead`), oldest first.
    #[command(alias = "list")]
    Ls {
        /// The topic whose dead letters to list (or its `-dead` topic).
        topic: String,
        /// Only dead letters after this sequence number.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Publish dead letters again on the topic they came from.
    Requeue {
        /// The topic whose dead letters to requeue (or its `-dead` topic).
        topic: String,
        /// The sequence numbers to requeue (as `dead-letters ls` shows them).
        #[arg(value_name = "SEQ", required_unless_present = "all")]
        seqs: Vec<u64>,
        /// Requeue every dead letter of the topic in the replay window.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
    },
}

/// The dead-letter topic for a topic name as the user gave it.
pub fn dead_topic(topic: &str) -> String {
    if topic.ends_with(crate::bus::DEAD_LETTER_SUFFIX) {
        topic.to_owned()
    } else {
        crate::bus::dead_letter_topic(topic)
    }
}

/// `workmanager hosts`.
pub async fn hosts(c: &Client) -> Result<(), CliError> {
    let v = c.get("/v1/hosts").await?;
    if c.output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let mut t = Table::new(&[
        "id",
        "pid",
        "language",
        "isolation",
        "workers",
        "restarts",
        "rss",
        "layers",
    ]);
    for h in v["hosts"].as_array().into_iter().flatten() {
        let workers = h["workers"].as_array().map_or(0, Vec::len);
        let layers: Vec<String> = h["sandbox"]["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        t.row(vec![
            cell(&h["id"]),
            cell(&h["pid"]),
            cell(&h["language"]),
            cell(&h["isolation"]),
            workers.to_string(),
            cell(&h["restarts"]),
            h["rssBytes"].as_u64().map(human_bytes).unwrap_or_default(),
            layers.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// `workmanager engines`.
pub async fn engines(c: &Client) -> Result<(), CliError> {
    let v = c.get("/v1/engines").await?;
    if c.output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let mut t = Table::new(&["mimeType", "language", "available", "reason"]);
    for e in v["engines"].as_array().into_iter().flatten() {
        t.row(vec![
            cell(&e["mimeType"]),
            cell(&e["language"]),
            cell(&e["available"]),
            cell(&e["reason"]),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// Runs a `dead-letters` subcommand.
pub async fn dead_letters(c: &Client, cmd: DeadLettersCommand) -> Result<(), CliError> {
    match cmd {
        DeadLettersCommand::Ls {
            topic,
            after,
            limit,
        } => {
            let path = format!(
                "/v1/dead-letters/{}?after={after}&limit={limit}",
                encode_segment(&dead_topic(&topic))
            );
            let v = c.get(&path).await?;
            if c.output == Output::Json {
                print_json(&v);
                return Ok(());
            }
            let mut t = Table::new(&[
                "seq", "id", "type", "topic", "reason", "attempts", "worker", "time", "error",
            ]);
            for d in v["deadLetters"].as_array().into_iter().flatten() {
                t.row(vec![
                    cell(&d["seq"]),
                    cell(&d["id"]),
                    cell(&d["type"]),
                    cell(&d["originalTopic"]),
                    cell(&d["reason"]),
                    cell(&d["attempts"]),
                    cell(&d["worker"]),
                    cell(&d["time"]),
                    cell(&d["error"]),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        DeadLettersCommand::Requeue { topic, seqs, all } => {
            let body = if all {
                json!({"all": true})
            } else {
                json!({"seqs": seqs})
            };
            let path = format!(
                "/v1/dead-letters/{}/requeue",
                encode_segment(&dead_topic(&topic))
            );
            let v = c.json(c.request(Method::POST, &path).json(&body)).await?;
            if c.output == Output::Json {
                print_json(&v);
                return Ok(());
            }
            println!("requeued {} dead letter(s)", cell(&v["requeued"]));
            let mut t = Table::new(&["seq", "id", "topic", "newSeq"]);
            for r in v["events"].as_array().into_iter().flatten() {
                t.row(vec![
                    cell(&r["seq"]),
                    cell(&r["id"]),
                    cell(&r["topic"]),
                    cell(&r["newSeq"]),
                ]);
            }
            print!("{}", t.render());
            let missing: Vec<String> = v["notFound"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x: &Value| cell(x))
                .collect();
            if !missing.is_empty() {
                eprintln!(
                    "workmanager: not in the replay window of {} (or not dead letters): {}",
                    dead_topic(&topic),
                    missing.join(", ")
                );
            }
            Ok(())
        }
    }
}
