#!/usr/bin/env bash
# Fuzzes the REST API from its own spec: starts a daemon (a token, rate limits off, code URLs
# limited to an unresolvable host so no download leaves the machine), runs schemathesis against
# /openapi.json for a bounded number of examples and time, stops the daemon. Fails on any 5xx,
# any status code, content type or body outside the spec. Called by scripts/test.sh.
#
#   SCHEMATHESIS_MAX_EXAMPLES (default 30) examples per operation; the run is capped at 110 s.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

st="$root/.tools/schemathesis/bin/st"
[ -x "$st" ] || st=$(command -v st) || { echo "schemathesis: not installed; run scripts/install-deps.sh" >&2; exit 1; }
cargo build --quiet --locked -p workmanager-supervisor --bin workmanager \
  -p workmanager-host-runner --bin host-runner
bin="${CARGO_TARGET_DIR:-$root/target}/debug/workmanager"

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

token="st-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
hash=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
WORKMANAGER_API_TOKENS="schemathesis:$hash:admin" \
WORKMANAGER_RATE_LIMIT_PER_SECOND=0 \
ALLOWED_CODE_SOURCE_HOSTS=packages.invalid \
WORKMANAGER_LOG=warn \
  "$bin" serve --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --data-dir "$tmp/data" 2>"$tmp/daemon.log" &
pid=$!
for _ in $(seq 1 300); do
  [ -s "$tmp/data/listen.addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/daemon.log" >&2; exit 1; }
  sleep 0.1
done
addr=$(head -n1 "$tmp/data/listen.addr")
for _ in $(seq 1 300); do
  curl -fsS "http://$addr/health" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "schemathesis: fuzzing http://$addr from /openapi.json" >&2
status=0
(cd "$tmp" && timeout 110 "$st" run "http://$addr/openapi.json" \
  -H "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --generation-deterministic \
  --request-timeout 30) || status=$?
if [ "$status" -eq 124 ]; then
  # The cap is a budget, not a finding: what ran until then passed its checks as it went.
  echo "schemathesis: stopped at the 110 s cap (a slow machine); lower SCHEMATHESIS_MAX_EXAMPLES" >&2
  status=0
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis: failed ($status); daemon log:" >&2
  tail -n 50 "$tmp/daemon.log" >&2
fi
exit "$status"
