#!/usr/bin/env bash
# Builds the daemon and its host-runner (release) and runs `workmanager serve` on embedded
# defaults: REST on 127.0.0.1:25001, state in ./data. Extra arguments go to `serve`
# (e.g. --listen 0.0.0.0:25001 --data-dir /var/lib/workmanager).
#
# The .NET engine is ready too when a .NET runtime is found (DOTNET_ROOT, or .tools/dotnet as
# scripts/install-deps.sh leaves it) and mcs is installed: its bridge is built next to the
# host-runner. Without them the daemon still starts; /v1/engines says why .NET is unavailable.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cargo build --release --locked -p workmanager-supervisor --bin workmanager \
  -p workmanager-host-runner --bin host-runner

if [ -z "${DOTNET_ROOT:-}" ] && [ -d "$root/.tools/dotnet" ]; then
  export DOTNET_ROOT="$root/.tools/dotnet"
fi
if [ -n "${DOTNET_ROOT:-}" ] && command -v mcs >/dev/null 2>&1; then
  host-runner/dotnet/build.sh "$root/target/release/dotnet" >&2 \
    || echo "serve: building the .NET bridge failed; .NET workers will be unavailable" >&2
fi

exec "$root/target/release/workmanager" serve "$@"
