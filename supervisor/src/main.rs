//! `workmanager`: the supervisor daemon. Exit codes: 0 after a clean shutdown, 1 when
//! start-up fails (bad settings, data directory in use, address taken), 2 for usage errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use wm_supervisor::config::LogFormat;
use wm_supervisor::{Config, ServeArgs};

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
    Serve(ServeArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WORKMANAGER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    wm_supervisor::shutdown::cancel_on_signals(token.clone());
    wm_supervisor::serve::serve(config, token).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::load(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("workmanager: {e}");
                    return ExitCode::from(1);
                }
            };
            init_tracing(config.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("workmanager: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("workmanager: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
