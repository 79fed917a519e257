//! The plugin's `WorkerResponse` (worker_api.fbs), checked as `flatbuffers::root` checks it
//! (default options: apparent size up to 2^31, a million tables) before the host forwards it.

use super::{Checker, Step, Table};

/// The default `flatbuffers::VerifierOptions` limits, which `flatbuffers::root` uses.
const MAX_APPARENT: usize = 1 << 31;
const MAX_TABLES: usize = 1_000_000;

/// The vtable slots (the generated `VT_*` constants; a test checks they still match).
pub(crate) mod slot {
    pub const RESULT_EVENT: usize = 4;
    pub const ERROR_MESSAGE: usize = 6;
    /// `CloudEvent`'s eight strings (`id` .. `time`) sit in slots 4, 6, .., 18.
    pub const EVENT_FIRST_STRING: usize = 4;
    pub const EVENT_LAST_STRING: usize = 18;
    pub const DATA: usize = 20;
    pub const EXTENSIONS: usize = 22;
    pub const EXTENSION_NAME: usize = 4;
    pub const EXTENSION_VALUE: usize = 6;
}

/// Checks a `WorkerResponse` root table.
pub(crate) fn check(bytes: &[u8]) -> Step<()> {
    check_with(bytes, MAX_APPARENT, MAX_TABLES)
}

/// [`check`] with other limits (the tests sweep them against the generic verifier's).
pub(crate) fn check_with(bytes: &[u8], max_apparent: usize, max_tables: usize) -> Step<()> {
    let mut c = Checker::new(bytes, max_apparent, max_tables);
    let root = c.follow(0)?;
    let t = c.table(root)?;
    if let Some(p) = c.field(t, slot::RESULT_EVENT)? {
        let at = c.follow(p)?;
        let event = c.table(at)?;
        cloud_event(&mut c, event)?;
    }
    c.str_field(t, slot::ERROR_MESSAGE)?;
    Ok(())
}

fn cloud_event(c: &mut Checker<'_>, t: Table) -> Step<()> {
    for voff in (slot::EVENT_FIRST_STRING..=slot::EVENT_LAST_STRING).step_by(2) {
        c.str_field(t, voff)?;
    }
    c.bytes_field(t, slot::DATA)?;
    c.tables_field(t, slot::EXTENSIONS, |c, at| {
        let ext = c.table(at)?;
        c.str_field(ext, slot::EXTENSION_NAME)?;
        c.str_field(ext, slot::EXTENSION_VALUE)?;
        Ok(())
    })
}
