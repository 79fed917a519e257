#!/usr/bin/env bash
# "Builds" build/__NAME__.py: a text/x-python worker is deployed as its source, so this only
# byte-compiles it (syntax errors show here, not at deploy) and copies it. Deploy it with
# `workmanager workers create --mime-type text/x-python build/__NAME__.py ...`; the daemon
# checks its imports against PYTHON_BLOCKED_MODULES (docs/python.md).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' src/worker.py
cp src/worker.py build/__NAME__.py
