//! Shell completions and the man page, generated from the clap definitions (so they never
//! drift from the real flags): `workmanager completions SHELL`, `workmanager man`.

use std::io::Write as _;
use std::path::Path;

/// Writes the completion script for `shell` to stdout.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// Writes the man page: to stdout, or `workmanager.1` plus one page per subcommand
/// (`workmanager-workers.1`, ...) into `dir`.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> std::io::Result<()> {
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
    }
}
