//! flatc output for the schemas in `schemas/`, made by `schemas/regen.sh` (flatc 23.5.26).
//!
//! **Invariant:** these files are never edited by hand. Each starts with the sha256 of the schema
//! it was made from; the test below fails when a schema changes without regeneration.
#![allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    dead_code,
    mismatched_lifetime_syntaxes,
    non_camel_case_types,
    missing_docs
)]

#[path = "worker_api_generated.rs"]
pub mod worker_api;

#[path = "host_protocol_generated.rs"]
pub mod host_protocol;

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    fn recorded_hash(generated: &str) -> &str {
        generated
            .lines()
            .find_map(|l| l.strip_prefix("// schema-sha256: "))
            .unwrap_or("<none recorded>")
    }

    fn check(schema: &str, generated: &str, name: &str) {
        let actual = hex::encode(Sha256::digest(schema.as_bytes()));
        assert_eq!(
            recorded_hash(generated),
            actual,
            "shared/src/generated/{name}_generated.rs is stale: schemas/{name}.fbs changed. \
             Run schemas/regen.sh and commit the result."
        );
    }

    #[test]
    fn generated_code_matches_the_schemas() {
        check(
            include_str!("../../../schemas/worker_api.fbs"),
            include_str!("worker_api_generated.rs"),
            "worker_api",
        );
        check(
            include_str!("../../../schemas/host_protocol.fbs"),
            include_str!("host_protocol_generated.rs"),
            "host_protocol",
        );
    }
}
