#!/usr/bin/env bash
# Builds the C# half of the .NET engine: Virtufin.Worker.DevKit.dll and the engine bridge
# Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll (+ its runtimeconfig.json) into OUT_DIR.
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

command -v mcs >/dev/null || { echo "dotnet/build.sh: mcs not found: install mono-mcs (scripts/install-deps.sh)" >&2; exit 1; }
[ -d "$ref" ] || { echo "dotnet/build.sh: no .NET reference pack at $ref: run scripts/install-deps.sh or set DOTNET_ROOT" >&2; exit 1; }

key=$( (cat "$0" "$here"/devkit/*.cs "$here"/bridge/*.cs; mcs --version; ls "$ref") | sha256sum | cut -c1-24)
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

mcs "${mcsflags[@]}" -out:"$tmp/Virtufin.Worker.DevKit.dll" -doc:"$tmp/Virtufin.Worker.DevKit.xml" "${refs[@]}" "$here"/devkit/*.cs >"$tmp/devkit.log" 2>&1 \
  || { cat "$tmp/devkit.log" >&2; exit 1; }
mcs "${mcsflags[@]}" -out:"$tmp/Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll" "${refs[@]}" \
  -r:"$tmp/Virtufin.Worker.DevKit.dll" "$here"/bridge/*.cs >"$tmp/bridge.log" 2>&1 \
  || { cat "$tmp/bridge.log" >&2; exit 1; }
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
for f in Virtufin.Worker.DevKit.dll Virtufin.Worker.DevKit.xml Virtufin.WorkManager.Engine.DotNetDll.Bridge.dll \
  Virtufin.WorkManager.Engine.DotNetDll.Bridge.runtimeconfig.json; do
  mv -f "$tmp/$f" "$out/$f"
done
echo "$key" > "$out/.build-key"
