//! The client half of the `workmanager` binary: subcommands that talk to a daemon over its
//! REST API (`workers`, `topics`, `hosts`, `engines`, `dead-letters`), and the worker
//! author's tools that need no daemon (`pack`, `inspect`, `run`, `new`). docs/cli.md is the user's
//! guide.
//!
//! Each subcommand prints a table for people or the daemon's JSON with `-o json`, and exits
//! with a code from [`client::exit`] that says what kind of failure it was.
//!
//! **Invariant:** nothing here loads plugin code or opens the daemon's data directory; the
//! client sees the daemon only through its API. `run` loads plugin code only in a sandboxed
//! host-runner, through the same `pool` the daemon uses.

pub mod admin;
pub mod client;
pub mod docs;
pub mod new;
pub mod output;
pub mod pack;
pub mod progress;
pub mod run;
pub mod sign;
pub mod topics;
pub mod workers;

use std::process::ExitCode;

use client::{CliError, Client, ConnArgs};

/// The client subcommands, flattened into the binary's command list by `main.rs`.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Manage workers: ls, get, create, start, stop, rm, reload, history, tags, invoke.
    Workers {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        cmd: workers::WorkersCommand,
    },
    /// Publish on a topic or tail it (SSE, resumes after disconnects).
    Topics {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        cmd: topics::TopicsCommand,
    },
    /// List the host processes: pid, RSS, restarts, sandbox layers.
    Hosts {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the engines and whether they are available.
    Engines {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List dead letters and requeue them to the topic they came from.
    DeadLetters {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        cmd: admin::DeadLettersCommand,
    },
    /// Build a worker package (.nupkg) and check it with the daemon's rules.
    Pack(pack::PackArgs),
    /// Print what the daemon would load from a package, or every problem it has.
    Inspect(pack::InspectArgs),
    /// Run a package once on one event in a real sandboxed host, without a daemon.
    Run(run::RunArgs),
    /// Create a worker project: source, header or DevKit reference, build and test scripts.
    New(new::NewArgs),
}

/// Runs a client subcommand; prints errors to stderr and returns the exit code.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let result = match cmd {
        ClientCommand::Pack(args) => pack::pack(args),
        ClientCommand::Inspect(args) => pack::inspect(args),
        ClientCommand::Run(args) => run::run(args),
        ClientCommand::New(args) => new::new(args),
        ClientCommand::Workers { conn, cmd } => {
            with_client(&conn, |c| Box::pin(workers::run(c, cmd)))
        }
        ClientCommand::Topics { conn, cmd } => {
            with_client(&conn, |c| Box::pin(topics::run(c, cmd)))
        }
        ClientCommand::Hosts { conn } => with_client(&conn, |c| Box::pin(admin::hosts(c))),
        ClientCommand::Engines { conn } => with_client(&conn, |c| Box::pin(admin::engines(c))),
        ClientCommand::DeadLetters { conn, cmd } => {
            with_client(&conn, |c| Box::pin(admin::dead_letters(c, cmd)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workmanager: {e}");
            ExitCode::from(e.code)
        }
    }
}

type CliFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), CliError>> + 'a>>;

/// Builds the client and a small single-threaded runtime, and runs `f` on them.
fn with_client(
    conn: &ConnArgs,
    f: impl for<'a> FnOnce(&'a Client) -> CliFuture<'a>,
) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::new(
                client::exit::FAILED,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    rt.block_on(f(&client))
}
