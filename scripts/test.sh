#!/usr/bin/env bash
# Runs every test: installs what they need, then format, lints and the whole test suite.
# This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/install-deps.sh"
export DOTNET_ROOT="$root/.tools/dotnet"

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --locked 2>&1
echo "== CloudEvents HTTP parsers, longer bounded fuzz run (stable; see supervisor/tests/it/cloudevents_fuzz.rs)" >&2
WM_FUZZ_CASES=50000 cargo test -p workmanager-supervisor --test it --locked cloudevents_fuzz 2>&1
echo "== schemathesis against /openapi.json (bounded)" >&2
"$root/scripts/schemathesis.sh"
echo "== shared with the tokio feature (HostLink)" >&2
cargo test -p workmanager-shared --features tokio --locked 2>&1
echo "== callgrind guard of the host's call path, release build (docs/benchmarks.md, \"Callgrind guard\")" >&2
# The debug run above guards the code as tested; this one the code as shipped, whose counts an
# optimisation can lower while the debug count rises.
cargo test -p workmanager-host-runner --release --locked --test it callgrind 2>&1
echo "== loom model of the ring (docs/ring.md)" >&2
RUSTFLAGS="--cfg loom" cargo test -p workmanager-shared --release --locked ring::loom 2>&1
