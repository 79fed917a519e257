//! Tests that need a process of their own (to SIGKILL it, or to give it a resource limit)
//! re-run this test binary as the child, running only themselves, with an environment
//! variable naming their data directory: the child branch of the test sees the variable and
//! does the child's part instead of the parent's.

use std::path::Path;
use std::process::Command;

/// This test binary, set to run only `test` (its full name) as a child, with `env` = `dir`.
pub fn command(test: &str, env: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, dir);
    cmd
}

/// The runtime a child (or a parent checking the child's store) runs the bus on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
