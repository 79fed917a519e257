//! `workmanager workers ...`: the worker resource (`/v1/workers`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{CliError, Client, exit};
use super::output::{Output, Table, cell, human_bytes, print_fields, print_json};
use super::progress;

/// `workmanager workers`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkersCommand {
    /// List the workers.
    #[command(alias = "list")]
    Ls,
    /// Show one worker.
    Get {
        /// The worker id.
        id: String,
    },
    /// Register a worker from a package (`.nupkg`); `--start` starts it too.
    Create(CreateArgs),
    /// Start a worker.
    Start {
        /// The worker id.
        id: String,
    },
    /// Stop a worker.
    Stop {
        /// The worker id.
        id: String,
    },
    /// Delete a worker.
    #[command(alias = "delete")]
    Rm {
        /// The worker id.
        id: String,
    },
    /// Upload a new package to a worker (hot reload when it runs).
    Reload {
        /// The worker id.
        id: String,
        /// The package file.
        #[arg(long, short = 'p', value_name = "FILE")]
        package: PathBuf,
        /// The package's minisign signature file (when the daemon has PACKAGE_TRUSTED_KEYS).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// The packages a worker has run, newest last.
    History {
        /// The worker id.
        id: String,
    },
    /// Show tags; `KEY=VALUE` arguments set tags, `--rm KEY` deletes one.
    Tags {
        /// The worker id.
        id: String,
        /// Tags to set.
        #[arg(value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Tags to delete.
        #[arg(long = "rm", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Call a worker directly with one event and print its reply.
    Invoke(InvokeArgs),
}

/// `workmanager workers create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The package file (`workmanager pack` makes one).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub package: PathBuf,
    /// The input topic.
    #[arg(long, short = 't')]
    pub topic: String,
    /// The coordination group.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// The engine's MIME type; guessed from the package when left out
    /// (`runtimes/` -> application/x-native-dll, `lib/` -> application/x-dotnet-dll).
    #[arg(long, value_name = "MIME")]
    pub mime_type: Option<String>,
    /// A config entry stamped onto every event as an extension (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// `shared` (default) or `dedicated`.
    #[arg(long)]
    pub isolation: Option<String>,
    /// Deadline of one call, seconds.
    #[arg(long, value_name = "SECONDS")]
    pub message_timeout: Option<u32>,
    /// Calls at once.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// The worker's own memory limit (`limits.memoryBytes`): bytes, or with a suffix K, M, G
    /// (KiB, MiB, GiB). RLIMIT_AS for native and Python workers, the GC heap hard limit for
    /// .NET workers; the worker gets a host of its own.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// The package's minisign signature file.
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Start the worker once it is registered.
    #[arg(long)]
    pub start: bool,
}

/// `workmanager workers invoke`.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// The worker id.
    pub id: String,
    /// A CloudEvent in structured JSON (`-` reads stdin).
    #[arg(long, short = 'e', value_name = "FILE", conflicts_with = "data")]
    pub event: Option<PathBuf>,
    /// The event's data as JSON; an event around it is made (`--type`, a random id).
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// The `type` of the event made around `--data`.
    #[arg(long = "type", default_value = "workmanager.cli.invoke")]
    pub ty: String,
}

/// Runs a `workers` subcommand.
pub async fn run(c: &Client, cmd: WorkersCommand) -> Result<(), CliError> {
    match cmd {
        WorkersCommand::Ls => {
            let v = c.get("/v1/workers").await?;
            if c.output == Output::Json {
                print_json(&v);
                return Ok(());
            }
            let mut t = Table::new(&[
                "id",
                "status",
                "topic",
                "group",
                "language",
                "host",
                "processed",
                "failed",
                "dead",
                "error",
            ]);
            for w in v["workers"].as_array().into_iter().flatten() {
                t.row(vec![
                    cell(&w["id"]),
                    cell(&w["status"]),
                    cell(&w["topic"]),
                    cell(&w["group"]),
                    cell(&w["language"]),
                    cell(&w["hostPid"]),
                    cell(&w["counters"]["processed"]),
                    cell(&w["counters"]["failed"]),
                    cell(&w["counters"]["deadLettered"]),
                    short(&cell(&w["lastError"]["message"]), 60),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        WorkersCommand::Get { id } => {
            let v = c.get(&worker_path(&id)?).await?;
            print_worker(c.output, &v);
            Ok(())
        }
        WorkersCommand::Create(args) => create(c, args).await,
        WorkersCommand::Start { id } => action(c, &id, "start").await,
        WorkersCommand::Stop { id } => action(c, &id, "stop").await,
        WorkersCommand::Rm { id } => {
            c.json(c.request(Method::DELETE, &worker_path(&id)?))
                .await?;
            if c.output == Output::Json {
                print_json(&json!({"id": id, "deleted": true}));
            } else {
                println!("worker {id} deleted");
            }
            Ok(())
        }
        WorkersCommand::Reload {
            id,
            package,
            signature,
        } => {
            let bytes = read_file(&package, "package")?;
            let mut rb = c
                .request(Method::PUT, &format!("{}/code", worker_path(&id)?))
                .header("content-type", "application/octet-stream");
            if let Some(sig) = signature {
                let text = read_file(&sig, "signature")?;
                rb = rb.header(
                    "x-package-signature",
                    base64::engine::general_purpose::STANDARD.encode(text),
                );
            }
            let v = c.json(progress::body(rb, bytes, "uploading")).await?;
            print_worker(c.output, &v);
            Ok(())
        }
        WorkersCommand::History { id } => {
            let v = c.get(&format!("{}/history", worker_path(&id)?)).await?;
            if c.output == Output::Json {
                print_json(&v);
                return Ok(());
            }
            let mut t = Table::new(&["version", "sha256", "size", "source", "created"]);
            for e in v["entries"].as_array().into_iter().flatten() {
                t.row(vec![
                    cell(&e["version"]),
                    cell(&e["code"]["sha256"]),
                    e["code"]["size"]
                        .as_u64()
                        .map(human_bytes)
                        .unwrap_or_default(),
                    cell(&e["code"]["source"]),
                    cell(&e["createdAt"]),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        WorkersCommand::Tags { id, set, remove } => tags(c, &id, &set, &remove).await,
        WorkersCommand::Invoke(args) => invoke(c, args).await,
    }
}

/// `/v1/workers/<id>`, refusing ids that would change the path.
fn worker_path(id: &str) -> Result<String, CliError> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CliError::usage(format!(
            "'{id}' is not a worker id (a UUID as `workmanager workers ls` shows)"
        )));
    }
    Ok(format!("/v1/workers/{id}"))
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Reads a local file, naming it on failure.
pub fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    let read = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            exit::NOT_FOUND
        } else {
            exit::USAGE
        };
        CliError::new(
            code,
            format!("cannot read the {what} file {}: {e}", path.display()),
        )
    })
}

/// `KEY=VALUE` arguments as a map.
fn pairs(items: &[String], flag: &str) -> Result<BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CliError::usage(format!("{flag} '{s}' is not KEY=VALUE"))),
        })
        .collect()
}

async fn create(c: &Client, a: CreateArgs) -> Result<(), CliError> {
    let bytes = read_file(&a.package, "package")?;
    let mime = match a.mime_type {
        Some(m) => m,
        None => super::pack::layout_engine(&bytes)
            .map(|e| e.mime())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "cannot tell the engine of {} from its layout; give --mime-type application/x-native-dll or application/x-dotnet-dll",
                    a.package.display()
                ))
            })?
            .to_owned(),
    };
    let mut code = json!({"content": base64::engine::general_purpose::STANDARD.encode(&bytes)});
    if let Some(sig) = &a.signature {
        code["signature"] = json!(String::from_utf8_lossy(&read_file(sig, "signature")?));
    }
    let mut body = json!({
        "mimeType": mime,
        "topic": a.topic,
        "codeSource": code,
        "config": pairs(&a.config, "--config")?,
        "tags": pairs(&a.tags, "--tag")?,
    });
    if let Some(g) = a.group {
        body["group"] = json!(g);
    }
    if let Some(i) = a.isolation {
        body["isolation"] = json!(i);
    }
    if let Some(t) = a.message_timeout {
        body["messageTimeoutSeconds"] = json!(t);
    }
    if let Some(m) = a.max_concurrency {
        body["maxConcurrency"] = json!(m);
    }
    if let Some(m) = a.memory {
        body["limits"] = json!({ "memoryBytes": m });
    }
    let raw = serde_json::to_vec(&body)
        .map_err(|e| CliError::new(exit::FAILED, format!("cannot encode the request: {e}")))?;
    let rb = c
        .request(Method::POST, "/v1/workers")
        .header("content-type", "application/json");
    let mut v = c.json(progress::body(rb, raw, "uploading")).await?;
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("workmanager: warning: {}", cell(w));
    }
    if a.start {
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let path = format!("{}/start", worker_path(&id)?);
        let started = c.json(c.request(Method::POST, &path)).await?;
        // Keep the create answer's warnings and dependency summary with the started view.
        let warnings = v["warnings"].take();
        let dependencies = v["dependencies"].take();
        v = started;
        if !warnings.is_null() {
            v["warnings"] = warnings;
        }
        if !dependencies.is_null() {
            v["dependencies"] = dependencies;
        }
    }
    print_worker(c.output, &v);
    Ok(())
}

async fn action(c: &Client, id: &str, verb: &str) -> Result<(), CliError> {
    let v = c
        .json(c.request(Method::POST, &format!("{}/{verb}", worker_path(id)?)))
        .await?;
    if c.output == Output::Json {
        print_json(&v);
    } else {
        println!("worker {id}: {}", cell(&v["status"]));
    }
    Ok(())
}

fn print_worker(output: Output, v: &Value) {
    if output == Output::Json {
        print_json(v);
        return;
    }
    let tags = v["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, x)| format!("{k}={}", cell(x)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let err = if v["lastError"].is_null() {
        String::new()
    } else {
        format!(
            "{}: {}",
            cell(&v["lastError"]["errorType"]),
            cell(&v["lastError"]["message"])
        )
    };
    let mut fields = vec![
        ("id", cell(&v["id"])),
        ("status", cell(&v["status"])),
        ("mimeType", cell(&v["mimeType"])),
        ("topic", cell(&v["topic"])),
        ("group", cell(&v["group"])),
        ("isolation", cell(&v["isolation"])),
        ("memoryLimit", cell(&v["limits"]["memoryBytes"])),
        ("hostPid", cell(&v["hostPid"])),
        ("package", cell(&v["code"]["sha256"])),
        (
            "counters",
            format!(
                "processed={} failed={} deadLettered={} inFlight={}",
                cell(&v["counters"]["processed"]),
                cell(&v["counters"]["failed"]),
                cell(&v["counters"]["deadLettered"]),
                cell(&v["counters"]["inFlight"])
            ),
        ),
        ("tags", tags),
        ("lastError", err),
        ("updatedAt", cell(&v["updatedAt"])),
    ];
    if !v["dependencies"].is_null() {
        fields.push(("dependencies", dependencies_summary(&v["dependencies"])));
    }
    print_fields(&fields);
}

/// A wheel's dependency install in one line: `tinydep==1.0 (index, 12 ms); 1 project in 640 ms`.
fn dependencies_summary(d: &Value) -> String {
    let projects: Vec<String> = d["projects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ms = p["fetchMs"]
                .as_u64()
                .map_or(String::new(), |ms| format!(", {ms} ms"));
            format!(
                "{}=={} ({}{ms})",
                cell(&p["name"]),
                cell(&p["version"]),
                cell(&p["source"])
            )
        })
        .collect();
    if projects.is_empty() {
        return "none".to_owned();
    }
    let n = projects.len();
    let reused = if d["reused"].as_bool() == Some(true) {
        ", reused"
    } else {
        ""
    };
    format!(
        "{}; {n} project{} in {} ms{reused}",
        projects.join(", "),
        if n == 1 { "" } else { "s" },
        cell(&d["elapsedMs"])
    )
}

async fn tags(c: &Client, id: &str, set: &[String], remove: &[String]) -> Result<(), CliError> {
    let base = format!("{}/tags", worker_path(id)?);
    for (k, val) in pairs(set, "tag")? {
        let rb = c
            .request(Method::PUT, &format!("{base}/{}", encode_segment(&k)))
            .json(&json!({"value": val}));
        c.json(rb).await?;
    }
    for k in remove {
        c.json(c.request(Method::DELETE, &format!("{base}/{}", encode_segment(k))))
            .await?;
    }
    let v = c.get(&base).await?;
    if c.output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let mut t = Table::new(&["key", "value"]);
    for (k, val) in v["tags"].as_object().into_iter().flatten() {
        t.row(vec![k.clone(), cell(val)]);
    }
    print!("{}", t.render());
    Ok(())
}

/// `--memory`: bytes, or a number with a binary suffix (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit '{other}': give bytes or a number with K, M or G (e.g. 256M)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: give bytes or e.g. 256M"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Percent-encodes one path segment.
pub fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn invoke(c: &Client, a: InvokeArgs) -> Result<(), CliError> {
    let event: Value = match (&a.event, &a.data) {
        (Some(path), _) => serde_json::from_slice(&read_file(path, "event")?).map_err(|e| {
            CliError::usage(format!(
                "the event file {} is not JSON: {e}",
                path.display()
            ))
        })?,
        (None, Some(data)) => {
            let data: Value = serde_json::from_str(data)
                .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?;
            json!({
                "specversion": "1.0",
                "id": uuid::Uuid::new_v4().to_string(),
                "source": "workmanager-cli",
                "type": a.ty,
                "datacontenttype": "application/json",
                "data": data,
            })
        }
        (None, None) => {
            return Err(CliError::usage(
                "give the event: --event FILE (a CloudEvent in JSON) or --data JSON",
            ));
        }
    };
    let rb = c
        .request(Method::POST, &format!("{}/invoke", worker_path(&a.id)?))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string());
    let v = c.json(rb).await?;
    if v.is_null() {
        if c.output == Output::Json {
            print_json(&Value::Null);
        } else {
            eprintln!("workmanager: the worker returned no reply");
        }
        return Ok(());
    }
    // The reply is a CloudEvent either way; people get it pretty-printed too.
    print_json(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_install_in_one_line() {
        let d = json!({
            "requires": ["tinydep>=1", "vendored-dep"],
            "projects": [
                {"name": "tinydep", "version": "1.0", "source": "index", "fetchMs": 41},
                {"name": "vendored-dep", "version": "2.0", "source": "package"},
            ],
            "reused": false,
            "elapsedMs": 912,
        });
        assert_eq!(
            dependencies_summary(&d),
            "tinydep==1.0 (index, 41 ms), vendored-dep==2.0 (package); 2 projects in 912 ms"
        );
        let cached = json!({"projects": [{"name": "a", "version": "1", "source": "cache"}],
                            "reused": true, "elapsedMs": 3});
        assert_eq!(
            dependencies_summary(&cached),
            "a==1 (cache); 1 project in 3 ms, reused"
        );
        assert_eq!(dependencies_summary(&json!({"projects": []})), "none");
    }

    #[test]
    fn ids_and_pairs() {
        assert!(worker_path("3f2a-9").is_ok());
        assert_eq!(worker_path("../x").unwrap_err().code, exit::USAGE);
        assert_eq!(pairs(&["a=b=c".into()], "--tag").unwrap()["a"], "b=c");
        assert!(pairs(&["=x".into()], "--tag").is_err());
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("64 k"), Ok(64 << 10));
        assert!(parse_bytes("12T").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }
}
