#!/usr/bin/env bash
# Compiles src/Worker.cs into build/out/__NAME__.dll and packs the folder into
# build/__NAME__.nupkg (lib/netcoreapp3.1/) with `workmanager pack`.
#
# Needs a C# compiler and the .NET reference assemblies. This uses Debian's `mcs` against the
# reference pack of DOTNET_ROOT (netcoreapp3.1); with the .NET SDK, `dotnet build` of a class
# library referencing Virtufin.Worker.DevKit.dll and CloudNative.CloudEvents.dll does the same.
# Both references are the daemon's copies, next to host-runner in dotnet/ (or set DEVKIT and
# CLOUDEVENTS); the host provides them at run time, so they are not packed.
set -euo pipefail
cd "$(dirname "$0")"
WORKMANAGER="${WORKMANAGER:-workmanager}"
: "${DOTNET_ROOT:?set DOTNET_ROOT to the .NET installation (with packs/Microsoft.NETCore.App.Ref)}"
REFPACK=$(ls -d "$DOTNET_ROOT"/packs/Microsoft.NETCore.App.Ref/*/ref/netcoreapp3.1 2>/dev/null | head -n1)
[ -n "$REFPACK" ] || { echo "no netcoreapp3.1 reference pack under $DOTNET_ROOT/packs" >&2; exit 1; }
if [ -z "${DEVKIT:-}" ]; then
  bin=$(dirname "$(command -v "$WORKMANAGER")")
  DEVKIT="$bin/dotnet/Virtufin.Worker.DevKit.dll"
fi
[ -f "$DEVKIT" ] || { echo "Virtufin.Worker.DevKit.dll not found at $DEVKIT; set DEVKIT" >&2; exit 1; }
CLOUDEVENTS="${CLOUDEVENTS:-$(dirname "$DEVKIT")/CloudNative.CloudEvents.dll}"
[ -f "$CLOUDEVENTS" ] || { echo "CloudNative.CloudEvents.dll not found at $CLOUDEVENTS; set CLOUDEVENTS" >&2; exit 1; }
rm -rf build/out && mkdir -p build/out
refs=()
for r in "$REFPACK"/*.dll; do refs+=("-r:$r"); done
mcs -nostdlib -target:library -nowarn:1702 -out:build/out/__NAME__.dll "${refs[@]}" \
  "-r:$DEVKIT" "-r:$CLOUDEVENTS" src/Worker.cs
"$WORKMANAGER" pack --id __NAME__ --version "${VERSION:-0.1.0}" --dotnet build/out \
  --out build/__NAME__.nupkg
