#!/bin/bash
# Wake-up timeline of one daemon (docs/benchmarks.md, the event path's fourth pass).
# usage: scripts/wakeups/trace.sh BIN_DIR invoke|one N OUT   (run it under the bench lock)
# Records sched_waking/sched_switch machine-wide while drive.py makes N calls, then prints
# who woke whom per call (table.py). Needs perf with tracepoints (perf_event_paranoid <= 1 or root).
set -euo pipefail
BIN=$1 MODE=$2 N=$3 OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd)
export PID_FILE=$(mktemp -u /tmp/wm-wakeups.XXXXXX)
WAIT=1.5 python3 "$HERE/drive.py" "$BIN" "$MODE" "$N" > "$OUT.drive" 2>&1 &
DP=$!
while [ ! -e "$PID_FILE" ]; do sleep 0.1; done
sleep 0.5
perf record -q -a -e sched:sched_switch,sched:sched_wakeup,sched:sched_waking -o "$OUT.data" -- sleep "${DUR:-2}" 2>/dev/null
wait $DP
rm -f "$PID_FILE"
cat "$OUT.drive"
perf script -i "$OUT.data" -F comm,tid,cpu,time,event,trace 2>/dev/null > "$OUT.txt"
python3 "$HERE/table.py" "$MODE" "$OUT.txt"
