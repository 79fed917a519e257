//! `host-runner`: runs worker plugins inside a sandbox, fed by the supervisor over a
//! shared-memory ring. Started by the supervisor only (fork+exec), never by hand.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") => {
            println!("host-runner {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "host-runner: this binary is started by the workmanager supervisor with a ring fd; \
                 run `workmanager serve` instead"
            );
            std::process::ExitCode::from(2)
        }
    }
}
