//! `host-runner`: runs worker plugins inside a sandbox, fed by the supervisor over a
//! shared-memory ring. Started by the supervisor only (fork+exec), never by hand.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(workmanager_host_runner::exit::USAGE)
}
