//! `workmanager`: the supervisor daemon (`serve`) and its command-line client (`workers`,
//! `topics`, `hosts`, `engines`, `dead-letters`, `pack`, `inspect`: `wm_supervisor::cli`,
//! docs/cli.md). `serve` exits 0 after a clean shutdown, 1 when start-up fails (bad settings,
//! data directory in use, address taken), 2 for usage errors; the client's codes are in
//! `wm_supervisor::cli::client::exit`.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use wm_supervisor::{Config, ServeArgs};

/// mimalloc instead of glibc's malloc: per event the runtime thread allocates what the bus
/// writer frees, and glibc then locks the allocating thread's arena on every such free (a futex
/// wake per contended lock); mimalloc frees across threads without a lock. Measured in
/// docs/benchmarks.md ("Fifth pass: CPU per accepted event").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off before mimalloc maps its first arena: mimalloc starts in a
/// constructor of priority 101 (`.init_array.00101`), and pages it touches before `main` would
/// otherwise fault in as 2 MiB pages where THP is `always` (idle RSS 21.2 instead of 17.9 MiB;
/// docs/benchmarks.md, the event path's fifth pass). Runs for every subcommand; harmless for
/// the client. [`no_transparent_huge_pages`] repeats it in `serve` and reports a failure.
extern "C" fn thp_off_before_the_allocator() {
    // No allocation and no output here: nothing is initialised yet.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

// SAFETY: an `.init_array` entry is a plain `extern "C" fn()` the loader calls once before
// `main`; the function takes no arguments, touches no Rust runtime state, allocates nothing and
// cannot unwind (a prctl call and an ignored result). The priority (00090) only orders it
// before mimalloc's (00101) and std's argument capture (00099), neither of which it needs.
#[used]
#[unsafe(link_section = ".init_array.00090")]
static THP_OFF: extern "C" fn() = thp_off_before_the_allocator;

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
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    #[command(flatten)]
    Client(Box<wm_supervisor::cli::ClientCommand>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per subcommand into --dir.
    Man {
        /// Write `workmanager.1`, `workmanager-workers.1`, ... into this folder.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token and the config line that grants it its scopes (the daemon
    /// stores only the token's sha256).
    Create {
        /// The token's name (audit log, rate limits): 1-64 of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// A scope: `admin`, `invoke`, `read`, `publish:<topic glob>`, `subscribe:<topic glob>`.
        #[arg(long = "scope", required = true, num_args = 1..)]
        scopes: Vec<String>,
    },
}

/// `workmanager token create`: exit 0 with the token on stdout, 2 on a bad name or scope.
fn token_create(name: &str, scopes: &[String]) -> ExitCode {
    use wm_supervisor::api::auth;
    let scopes = scopes.join(" ");
    let token = match auth::new_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("workmanager: cannot read random bytes: {e}");
            return ExitCode::from(1);
        }
    };
    let entry = format!("{name}:{}:{scopes}", hex::encode(auth::hash_token(&token)));
    // Validate exactly as the daemon will read it.
    if let Err(e) = auth::parse_tokens(&entry) {
        eprintln!("workmanager: {e}");
        return ExitCode::from(2);
    }
    // stdout: the token, then the config line (scripts take the first line); stderr: help.
    println!("{token}");
    println!("WORKMANAGER_API_TOKENS = [\"{entry}\"]");
    eprintln!(
        "\nThe token (first line) is shown once; the daemon keeps only its sha256. Add the second line to the config file (or append \"{entry}\" to an existing WORKMANAGER_API_TOKENS list, or to the environment variable, comma-separated), then restart. Clients send: Authorization: Bearer <token>"
    );
    ExitCode::SUCCESS
}

/// Turns transparent huge pages off for the daemon (again: [`THP_OFF`] did it before `main`,
/// silently; this call reports a failure). Where the kernel's THP mode is `always`, mimalloc's
/// 2 MiB-aligned arenas fault in as huge pages, and the RSS with 100-event batches was 58-65 MiB
/// instead of 35-38 MiB (docs/benchmarks.md, "Fifth pass"). The flag is inherited by the
/// host-runners the daemon spawns. Best effort: a kernel without the prctl keeps THP.
fn no_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("workmanager: cannot turn transparent huge pages off ({e}); continuing");
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
        Command::Token(TokenCommand::Create { name, scopes }) => token_create(&name, &scopes),
        Command::Client(cmd) => wm_supervisor::cli::run(*cmd),
        Command::Completions { shell } => {
            wm_supervisor::cli::docs::completions(Cli::command(), shell);
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match wm_supervisor::cli::docs::man(Cli::command(), dir.as_deref())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("workmanager: cannot write the man page: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve(args) => {
            no_transparent_huge_pages();
            let config = match Config::load(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("workmanager: {e}");
                    return ExitCode::from(1);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads())
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("workmanager: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            // Inside the runtime: the OTLP exporter's connection lives on it.
            let telemetry = {
                let _enter = rt.enter();
                wm_supervisor::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())
            };
            let code = match rt.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("workmanager: {e:#}");
                    ExitCode::from(1)
                }
            };
            // Flush the last spans while the runtime still runs the exporter.
            let _enter = rt.enter();
            telemetry.shutdown();
            code
        }
    }
}
