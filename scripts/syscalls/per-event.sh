#!/bin/bash
# Syscalls per accepted event, by daemon thread (docs/benchmarks.md, the event path's fifth pass).
# usage: scripts/syscalls/per-event.sh OUT ROWS   (ROWS: single,batch; run it under the bench lock)
# Runs the compare bench's events mode (with WM_COMPARE_BASELINE_DAEMON set, the baseline's daemon
# comes first in each group) and, 2.5 s after each daemon appears: `perf stat --per-thread` of its
# syscalls, reading the daemon's POST 202 count from /metrics twice inside that window
# (OUT.<n>.{stat,m0,m1,t0,t1}), then `perf record -g` for 2.5 s (OUT.<n>.data). Then
# `per_event.py OUT <n> <events per request>` prints the table. Build the bench first
# (`cargo bench --no-run -p workmanager-tests --bench compare`). Needs perf with tracepoints.
# CALL_GRAPH=dwarf records DWARF call graphs at 499 Hz instead of frame pointers at 1999 Hz:
# frame-pointer stacks stop at the first Rust frame below SQLite, so only DWARF attributes the
# bus writer's samples to their Rust callers (12o, docs/benchmarks.md); its files are larger.
set -u
OUT=$1 ROWS=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$(ls -t "$TARGET"/release/deps/compare-* | grep -v '\.d$' | head -1)
cd "$ROOT/tests"
uptime > "$OUT.uptime"
WM_COMPARE_ONLY=events WM_COMPARE_EVENT_ROWS=$ROWS "$BENCH" --bench > "$OUT.bench" 2>&1 &
BP=$!
EV=raw_syscalls:sys_enter
for s in read write writev recvfrom sendto sendmsg recvmsg epoll_wait epoll_pwait futex fdatasync fsync pwrite64 pread64 sched_yield accept4 madvise mmap munmap mprotect; do
  EV=$EV,syscalls:sys_enter_$s
done
SEEN=" " N=0
while kill -0 $BP 2>/dev/null; do
  sleep 0.2
  for PID in $(pgrep -P $BP -x workmanager); do
    case "$SEEN" in *" $PID "*) continue ;; esac
    SEEN="$SEEN$PID " N=$((N + 1))
    echo "daemon $N: $PID"
    sleep 2.5
    M=""
    for PORT in $(ss -ltnpH | grep "pid=$PID," | awk '{print $4}' | sed 's/.*://'); do
      curl -s -m 1 "http://127.0.0.1:$PORT/metrics" | grep -q workmanager_http_requests_total &&
        M=http://127.0.0.1:$PORT/metrics && break
    done
    Q='method="POST",status="202"'
    perf stat --per-thread -e "$EV" -p "$PID" -o "$OUT.$N.stat" -- bash -c \
      "sleep 0.3; date +%s.%N > $OUT.$N.t0; curl -s $M | grep '$Q' > $OUT.$N.m0; sleep 2;
       date +%s.%N > $OUT.$N.t1; curl -s $M | grep '$Q' > $OUT.$N.m1; sleep 0.3"
    if [ "${CALL_GRAPH:-fp}" = dwarf ]; then
      perf record -q --call-graph dwarf,16384 -F 499 -p "$PID" -o "$OUT.$N.data" -- sleep 2.5 2>/dev/null
    else
      perf record -q -g -F 1999 -p "$PID" -o "$OUT.$N.data" -- sleep 2.5 2>/dev/null
    fi
  done
done
uptime >> "$OUT.uptime"
grep -E "end to end" "$OUT.bench" | grep -v '^|'
