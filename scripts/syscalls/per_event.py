#!/usr/bin/env python3
"""Syscalls per accepted event by thread, from per-event.sh's files.

usage: per_event.py OUT N EVENTS_PER_REQUEST
The syscalls were counted over perf stat's elapsed time; the daemon's 202 count was read at two
moments inside it, so the requests are scaled from that span to the counted one.
"""
import re
import sys

out, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])


def number(path):
    try:
        return float(open(path).read().split()[-1])
    except (OSError, IndexError, ValueError):
        return 0.0


requests = number(f"{out}.{n}.m1") - number(f"{out}.{n}.m0")
span = number(f"{out}.{n}.t1") - number(f"{out}.{n}.t0")
stat = open(f"{out}.{n}.stat").read().splitlines()
elapsed = next(float(l.split()[0]) for l in stat if "seconds time elapsed" in l)
events = requests * batch * elapsed / span if span > 0 else 0.0
counts = {}
for line in stat:
    p = line.split()
    if len(p) >= 3 and p[1].replace(",", "").isdigit():
        thread = re.sub(r"-\d+$", "", p[0])
        name = p[2].split(":")[-1].replace("sys_enter_", "")
        name = "all" if name == "sys_enter" else name
        per = counts.setdefault(thread, {})
        per[name] = per.get(name, 0) + int(p[1].replace(",", ""))
print(f"{out}.{n}: {requests:.0f} publish requests in {span:.2f} s; "
      f"{events:.0f} events accepted in the {elapsed:.2f} s counted")
for thread in ["tokio-rt-worker", "wm-bus-writer", "wm-host-link"]:
    per = counts.get(thread, {})
    cells = [f"{k}={v / max(events, 1):.2f}" for k, v in sorted(per.items(), key=lambda x: -x[1])
             if v / max(events, 1) >= 0.01]
    print(f"  {thread}: " + " ".join(cells))
