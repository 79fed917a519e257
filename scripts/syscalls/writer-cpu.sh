#!/bin/bash
# The bus writer thread's CPU per reply on the batch row, and what the row overflowed
# (docs/benchmarks.md, the seventh pass). usage: scripts/syscalls/writer-cpu.sh OUT ROUNDS
# Run it under the bench lock. Runs the compare bench's batch row (with
# WM_COMPARE_BASELINE_DAEMON set, both builds per round) and, 2.5 s after each daemon appears,
# reads over 3 s: the `wm-bus-writer` thread's and the daemon's CPU ticks
# (/proc/<pid>/task/<tid>/stat), the replies stored (`workmanager_bus_published_total` of
# `batch.in.reply`), and the `batch*` publish, overflow and eviction counters (OUT, one line
# per daemon). Build the bench first (`cargo bench --no-run -p workmanager-tests --bench compare`).
set -u
OUT=$(realpath -m "$1") ROUNDS=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$(ls -t "$TARGET"/release/deps/compare-* | grep -v '\.d$' | head -1)
cd "$ROOT/tests"
uptime > "$OUT"
WM_COMPARE_ONLY=events WM_COMPARE_EVENT_ROWS=batch WM_COMPARE_EVENT_ROUNDS=$ROUNDS \
  "$BENCH" --bench > "$OUT.bench" 2>&1 &
BP=$!
ticks() { awk '{print $14 + $15}' "$1" 2>/dev/null || echo 0; }
replies() { curl -s -m 1 "$1" | awk '/^workmanager_bus_published_total\{topic="batch.in.reply"\}/{print $2}'; }
counters() {
  curl -s -m 1 "$1" |
    grep -E '^workmanager_bus_(published|overflowed|dead_letters_evicted)_total\{topic="batch' |
    tr '\n' ' '
}
SEEN=" "
while kill -0 $BP 2>/dev/null; do
  sleep 0.2
  for PID in $(pgrep -P $BP -x workmanager); do
    case "$SEEN" in *" $PID "*) continue ;; esac
    SEEN="$SEEN$PID "
    sleep 2.5
    EXE=$(readlink "/proc/$PID/exe")
    TID=$(ps -L -o tid=,comm= -p "$PID" | awk '$2 == "wm-bus-writer" {print $1}')
    M=""
    for PORT in $(ss -ltnpH | grep "pid=$PID," | awk '{print $4}' | sed 's/.*://'); do
      curl -s -m 1 "http://127.0.0.1:$PORT/metrics" | grep -q workmanager_bus_published_total &&
        M=http://127.0.0.1:$PORT/metrics && break
    done
    [ -n "$TID" ] && [ -n "$M" ] || continue
    echo "$EXE at t0: $(counters $M)" >> "$OUT"
    W0=$(ticks "/proc/$PID/task/$TID/stat") D0=$(ticks "/proc/$PID/stat") R0=$(replies $M)
    sleep 3
    W1=$(ticks "/proc/$PID/task/$TID/stat") D1=$(ticks "/proc/$PID/stat") R1=$(replies $M)
    echo "$EXE at t0 + 3 s: $(counters $M)" >> "$OUT"
    python3 - "$EXE" "${R0:-0}" "${R1:-0}" "$W0" "$W1" "$D0" "$D1" >> "$OUT" <<'PY'
import os, sys
exe, r0, r1, w0, w1, d0, d1 = sys.argv[1], *map(float, sys.argv[2:])
hz = os.sysconf("SC_CLK_TCK")
replies = r1 - r0
if replies <= 0 or w1 < w0:
    print(f"{exe}: the daemon ended inside the window; no figure")
else:
    us = lambda t: t / hz * 1e6 / replies
    print(f"{exe}: {replies / 3:.0f} replies/s; writer {us(w1 - w0):.1f} us/reply "
          f"({(w1 - w0) / hz / 3:.2f} CPU); daemon {us(d1 - d0):.1f} us/reply")
PY
  done
done
wait $BP
uptime >> "$OUT"
