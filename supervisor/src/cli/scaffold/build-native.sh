#!/usr/bin/env bash
# Builds build/lib__LIB__.so and packs it into build/__NAME__.nupkg with `workmanager pack`
# (which checks the package with the daemon's own rules).
set -euo pipefail
cd "$(dirname "$0")"
WORKMANAGER="${WORKMANAGER:-workmanager}"
mkdir -p build
__COMPILE__ -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
  -Iinclude -o build/lib__LIB__.so src/__SRC__
"$WORKMANAGER" pack --id __NAME__ --version "${VERSION:-0.1.0}" --native build/lib__LIB__.so \
  --out build/__NAME__.nupkg
