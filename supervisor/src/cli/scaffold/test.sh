#!/usr/bin/env bash
# Builds the package, then runs each events/*.json through it once in a real sandboxed host
# (`workmanager run`, no daemon needed) and checks the reply: type __NAME__.reply, the same
# data, the same correlationid. Exit 0 when every event passes.
set -euo pipefail
cd "$(dirname "$0")"
WORKMANAGER="${WORKMANAGER:-workmanager}"
./build.sh
failed=0
for ev in events/*.json; do
  out="build/$(basename "$ev" .json).result.json"
  if ! "$WORKMANAGER" run "__PACKAGE__" __RUN_FLAGS__--event "$ev" -o json >"$out" 2>"$out.log"; then
    echo "FAIL $ev: the worker failed:" >&2
    cat "$out" "$out.log" >&2
    failed=1
    continue
  fi
  # Compare with the sample: the checks use python3's json module (or jq if you prefer).
  if python3 - "$ev" "$out" <<'PY'
import json, sys
sent = json.load(open(sys.argv[1]))
got = json.load(open(sys.argv[2]))
reply = got["reply"]
assert got["ok"] is True, got
assert reply["type"] == "__NAME__.reply", reply
assert reply.get("data") == sent.get("data"), (reply.get("data"), sent.get("data"))
assert reply.get("correlationid") == sent.get("correlationid"), reply
PY
  then
    echo "ok   $ev"
  else
    echo "FAIL $ev: unexpected reply:" >&2
    cat "$out" >&2
    failed=1
  fi
done
exit "$failed"
