#!/usr/bin/env bash
# Builds the C# half of the .NET engine into OUT_DIR: CloudNative.CloudEvents.dll, the DevKit
# Virtufin.Worker.DevKit.dll (2.x, over CloudNative.CloudEvents), the 1.x DevKit for workers built
# against it (devkit-v1/Virtufin.Worker.DevKit.dll), the engine bridge
# Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll (+ its runtimeconfig.json), and Roslyn
# (Microsoft.CodeAnalysis*.dll, for the C# source engine) copied from the SDK in DOTNET_ROOT;
# without Roslyn the bridge is built without the source engine (DLL workers are unaffected).
#
#   host-runner/dotnet/build.sh [OUT_DIR]      (default: target/debug/dotnet)
#
# The host-runner looks for them in <dir of the host-runner binary>/dotnet/, so for a release
# build run `host-runner/dotnet/build.sh target/release/dotnet`.
#
# Compiler: `dotnet build` needs an SDK that runs here (the 3.1 SDK needs libssl 1.1, absent on
# Debian 12), so this uses Debian's mono `mcs -nostdlib` against the .NET Core 3.1 reference pack
# in $DOTNET_ROOT/packs/Microsoft.NETCore.App.Ref/3.1.0 (DOTNET_ROOT defaults to <repo>/.tools/dotnet,
# filled by scripts/install-deps.sh). The output targets netcoreapp3.1 and, with rollForward
# Major, runs on any newer runtime. A build whose sources and compiler are unchanged is skipped
# (stamp file OUT_DIR/.build-key).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/debug/dotnet}
dotnet_root=${DOTNET_ROOT:-$root/.tools/dotnet}
ref="$dotnet_root/packs/Microsoft.NETCore.App.Ref/3.1.0/ref/netcoreapp3.1"
# Roslyn's managed assemblies (netstandard2.0), from the SDK scripts/install-deps.sh unpacks.
roslyn=${ROSLYN_DIR:-$(ls -d "$dotnet_root"/sdk/*/Roslyn/bincore 2>/dev/null | sort -V | tail -n1)}

command -v mcs >/dev/null || { echo "dotnet/build.sh: mcs not found: install mono-mcs (scripts/install-deps.sh)" >&2; exit 1; }
[ -d "$ref" ] || { echo "dotnet/build.sh: no .NET reference pack at $ref: run scripts/install-deps.sh or set DOTNET_ROOT" >&2; exit 1; }
if [ -z "$roslyn" ] || [ ! -f "$roslyn/Microsoft.CodeAnalysis.CSharp.dll" ]; then
  # DLL workers do not need it: build without the C# source engine (it refuses source, and
  # /v1/engines shows text/x-csharp unavailable).
  echo "dotnet/build.sh: no Roslyn (Microsoft.CodeAnalysis.CSharp.dll) under $dotnet_root/sdk/*/Roslyn/bincore: building without the C# source engine (run scripts/install-deps.sh or set ROSLYN_DIR)" >&2
  roslyn=""
fi

key=$( (cat "$0" "$here"/cloudevents/*.cs "$here"/devkit/*.cs "$here"/devkit-v1/*.cs "$here"/bridge/*.cs; mcs --version; ls "$ref"
  if [ -n "$roslyn" ]; then sha256sum "$roslyn"/Microsoft.CodeAnalysis*.dll; else echo no-roslyn; fi) | sha256sum | cut -c1-24)
if [ -f "$out/.build-key" ] && [ "$(cat "$out/.build-key")" = "$key" ] \
  && [ -f "$out/Virtufin.Worker.DevKit.dll" ] && [ -f "$out/Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll" ]; then
  exit 0
fi

mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
refs=()
for f in "$ref"/*.dll; do refs+=("-r:$f"); done
# CS1702 (assembly version unification) is harmless against the reference pack.
mcsflags=(-nostdlib -target:library -unsafe -optimize+ -debug- -nowarn:1702 -langversion:7.2)

build() { # build <log name> <mcs args...>
  local log="$tmp/$1.log"; shift
  mcs "${mcsflags[@]}" "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}
mkdir -p "$tmp/devkit-v1"
build cloudevents -out:"$tmp/CloudNative.CloudEvents.dll" -doc:"$tmp/CloudNative.CloudEvents.xml" "${refs[@]}" "$here"/cloudevents/*.cs
build devkit -out:"$tmp/Virtufin.Worker.DevKit.dll" -doc:"$tmp/Virtufin.Worker.DevKit.xml" "${refs[@]}" \
  -r:"$tmp/CloudNative.CloudEvents.dll" "$here"/devkit/*.cs
build devkit-v1 -out:"$tmp/devkit-v1/Virtufin.Worker.DevKit.dll" -doc:"$tmp/devkit-v1/Virtufin.Worker.DevKit.xml" "${refs[@]}" "$here"/devkit-v1/*.cs \
  "$here"/devkit/WorkerContext.cs  # the same WorkerContext in both DevKits (no CloudEvent in it)
roslyn_refs=(-define:NO_ROSLYN)
if [ -n "$roslyn" ]; then
  cp "$roslyn"/Microsoft.CodeAnalysis.dll "$roslyn"/Microsoft.CodeAnalysis.CSharp.dll "$tmp/"
  roslyn_refs=(-r:"$tmp/Microsoft.CodeAnalysis.dll" -r:"$tmp/Microsoft.CodeAnalysis.CSharp.dll")
fi
# The C# source engine compiles against the netcoreapp3.1 reference assemblies (4 MB), which a
# runtime-only install lacks: they go next to the bridge.
mkdir -p "$tmp/ref"
cp "$ref"/*.dll "$tmp/ref/"
build bridge -out:"$tmp/Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll" "${refs[@]}" \
  -r:"$tmp/CloudNative.CloudEvents.dll" -r:"$tmp/Virtufin.Worker.DevKit.dll" \
  "${roslyn_refs[@]}" "$here"/bridge/*.cs
cat > "$tmp/Virtufin.WorkManager.Engine.DotNetDll.Bridge.runtimeconfig.json" <<'JSON'
{
  "runtimeOptions": {
    "tfm": "netcoreapp3.1",
    "rollForward": "Major",
    "framework": { "name": "Microsoft.NETCore.App", "version": "3.1.0" },
    "configProperties": {
      "System.Globalization.Invariant": true,
      "System.GC.Concurrent": false
    }
  }
}
JSON
mkdir -p "$out/devkit-v1"
rm -rf "$out/ref" && mv "$tmp/ref" "$out/ref"
rm -f "$out/Microsoft.CodeAnalysis.dll" "$out/Microsoft.CodeAnalysis.CSharp.dll"
for f in CloudNative.CloudEvents.dll CloudNative.CloudEvents.xml Virtufin.Worker.DevKit.dll Virtufin.Worker.DevKit.xml \
  devkit-v1/Virtufin.Worker.DevKit.dll devkit-v1/Virtufin.Worker.DevKit.xml Microsoft.CodeAnalysis.dll Microsoft.CodeAnalysis.CSharp.dll \
  Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll Virtufin.WorkManager.Engine.DotNetDll.Bridge.runtimeconfig.json; do
  [ -f "$tmp/$f" ] && mv -f "$tmp/$f" "$out/$f"
done
echo "$key" > "$out/.build-key"
