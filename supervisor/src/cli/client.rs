//! The HTTP client of the CLI: where the daemon is (`--server` / `WORKMANAGER_ADDR`, TCP or
//! `unix:/path`), the token (`WORKMANAGER_TOKEN`), and API errors turned into [`CliError`]
//! with an exit code and a hint.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::output::Output;

/// The default address: the daemon's default listener.
pub const DEFAULT_ADDR: &str = "127.0.0.1:25001";

/// Exit codes of the client subcommands (docs/cli.md).
pub mod exit {
    /// The daemon answered with an error not covered below (4xx/5xx).
    pub const FAILED: u8 = 1;
    /// Bad command line or bad local input (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// The worker, tag, route or file does not exist (404).
    pub const NOT_FOUND: u8 = 3;
    /// No valid token, or the token lacks the scope (401/403).
    pub const AUTH: u8 = 4;
    /// The daemon could not be reached (connection refused, timeout, TLS).
    pub const UNREACHABLE: u8 = 5;
    /// A package is invalid (`pack`, `inspect`, or the daemon's `invalid_package`).
    pub const INVALID_PACKAGE: u8 = 6;
    /// `run`: the worker failed or crashed.
    pub const WORKER_FAILED: u8 = 7;
}

/// Where the daemon is and how to authenticate; shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// The daemon: `HOST:PORT`, `http://HOST:PORT`, `https://HOST:PORT` or `unix:/path/to.sock`.
    #[arg(
        long,
        global = true,
        env = "WORKMANAGER_ADDR",
        default_value = DEFAULT_ADDR,
        value_name = "ADDR"
    )]
    pub server: String,
    /// Output format: `table` for people, `json` for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Seconds to wait for an answer (uploads and invocations may take a while).
    #[arg(long, global = true, default_value_t = 60, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Why a client subcommand failed: the message to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong and what to do next (printed after `workmanager: `).
    pub message: String,
    /// The process exit code ([`exit`]).
    pub code: u8,
    /// Further lines (e.g. every problem of an invalid package).
    pub details: Vec<String>,
}

impl CliError {
    /// An error with an exit code.
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code,
            details: Vec::new(),
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(exit::USAGE, message)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for d in &self.details {
            write!(f, "\n  - {d}")?;
        }
        Ok(())
    }
}

/// The parsed `--server` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// `http://` or `https://` base URL, no trailing slash.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Server {
    /// Parses `HOST:PORT`, `http(s)://...` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Server, CliError> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(CliError::usage(
                    "--server unix: needs a socket path, e.g. unix:/run/workmanager/api.sock",
                ));
            }
            return Ok(Server::Unix(PathBuf::from(path)));
        }
        let url = if s.starts_with("http://") || s.starts_with("https://") {
            s.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", s.trim_end_matches('/'))
        };
        match url::Url::parse(&url) {
            Ok(u) if u.host().is_some() => Ok(Server::Tcp(url)),
            _ => Err(CliError::usage(format!(
                "--server / WORKMANAGER_ADDR '{s}' is not an address: use HOST:PORT, http(s)://HOST:PORT or unix:/path"
            ))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::Tcp(u) => u.clone(),
            Server::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// A connection to one daemon.
pub struct Client {
    http: reqwest::Client,
    base: String,
    server: Server,
    token: Option<String>,
    /// The output format asked for.
    pub output: Output,
}

impl Client {
    /// Builds the client from the flags and `WORKMANAGER_TOKEN`.
    pub fn new(conn: &ConnArgs) -> Result<Client, CliError> {
        let server = Server::parse(&conn.server)?;
        let token = std::env::var("WORKMANAGER_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(conn.timeout.max(1)))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("workmanager-cli/", env!("CARGO_PKG_VERSION")));
        let base = match &server {
            Server::Tcp(u) => u.clone(),
            Server::Unix(p) => {
                builder = builder.unix_socket(p.clone());
                // The host name is what the daemon's Host guard sees; it accepts localhost.
                "http://localhost".to_owned()
            }
        };
        let http = builder.build().map_err(|e| {
            CliError::new(exit::FAILED, format!("cannot set up the HTTP client: {e}"))
        })?;
        Ok(Client {
            http,
            base,
            server,
            token,
            output: conn.output,
        })
    }

    /// A request to `path` (starting with `/`), with the token when there is one.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// A request without the client's overall timeout (SSE streams).
    pub fn stream_request(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path)
            .timeout(Duration::from_secs(365 * 24 * 3600))
    }

    /// Sends a request; a 2xx answer is returned, anything else becomes a [`CliError`].
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let resp = rb.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(api_error(resp).await)
    }

    /// Sends a request and reads a JSON answer (`null` for 204).
    pub async fn json(&self, rb: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = self.send(rb).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::new(
                exit::FAILED,
                format!(
                    "{} answered with something that is not JSON ({e}); is --server pointing at a workmanager daemon?",
                    self.server.describe()
                ),
            )
        })
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.json(self.request(Method::GET, path)).await
    }

    /// The error for a request that got no HTTP answer.
    pub fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let what = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            format!("connection failed ({})", root_cause(e))
        } else {
            root_cause(e)
        };
        CliError::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the daemon at {}: {what}; is it running? Set --server or WORKMANAGER_ADDR (HOST:PORT or unix:/path)",
                self.server.describe()
            ),
        )
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turns an API error answer into a [`CliError`] with an exit code and a hint.
pub async fn api_error(resp: reqwest::Response) -> CliError {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the daemon answered {status}"));
    let details: Vec<String> = body["error"]["details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| match d {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let (exit_code, hint) = match status.as_u16() {
        401 => (
            exit::AUTH,
            " (set WORKMANAGER_TOKEN to a token the daemon knows)",
        ),
        403 => (exit::AUTH, ""),
        404 => (exit::NOT_FOUND, ""),
        422 if code == "invalid_package" => (
            exit::INVALID_PACKAGE,
            " (`workmanager inspect PKG` shows the same checks locally)",
        ),
        _ => (exit::FAILED, ""),
    };
    let label = if code.is_empty() {
        status.to_string()
    } else {
        code
    };
    CliError {
        message: format!("{label}: {message}{hint}"),
        code: exit_code,
        details,
    }
}

/// Whether progress should be drawn (stderr is a terminal).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        assert_eq!(
            Server::parse("127.0.0.1:25001").unwrap(),
            Server::Tcp("http://127.0.0.1:25001".into())
        );
        assert_eq!(
            Server::parse("https://wm.example:443/").unwrap(),
            Server::Tcp("https://wm.example:443".into())
        );
        assert_eq!(
            Server::parse("unix:/run/wm.sock").unwrap(),
            Server::Unix("/run/wm.sock".into())
        );
        assert_eq!(Server::parse("unix:").unwrap_err().code, exit::USAGE);
        assert_eq!(Server::parse("http://").unwrap_err().code, exit::USAGE);
    }
}
