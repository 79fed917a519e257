//! `workmanager`: the supervisor daemon.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "workmanager",
    version,
    about = "Runs untrusted worker plugins behind a REST API and a pub/sub bus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            println!("workmanager {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
