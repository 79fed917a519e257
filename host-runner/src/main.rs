//! `host-runner`: runs worker plugins inside a sandbox, fed by the supervisor over a
//! shared-memory ring. Started by the supervisor only (fork+exec), never by hand:
//!
//! `host-runner --ring-fd 3 --engine native --host-id <id> [--rlimit-as <bytes>]
//! [--rlimit-nofile <n>] [--no-seccomp] [--no-landlock]`
//!
//! Exit codes are listed in `workmanager_host_runner::exit`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(workmanager_host_runner::host::main())
}
