"""Who woke whom, per call, from `perf script -F comm,tid,cpu,time,event,trace` of sched_waking
and sched_switch events. usage: table.py invoke|one FILE. The window runs from the client's
first to its last wake-up; a call is one client wake-up (`invoke`) or two (`one`: the 202 and
the SSE frame). Thread names: tokio-rt-worker (the runtime and its blocking pool),
wm-bus-writer, wm-host-link, w<N>:<worker> (a host's lane thread), python3 (the client)."""
import collections, re, sys

PAT = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$")


def name(c):
    if re.match(r"^w\d+:", c):
        return "host lane thread"
    return "client" if c == "python3" else c


def main():
    mode, path = sys.argv[1], sys.argv[2]
    per = 2 if mode == "one" else 1
    evs = [m.groups() for m in map(PAT.match, open(path)) if m]
    client = [float(e[3]) for e in evs if e[4] == "sched_waking" and "comm=python3 " in e[5]]
    t0, t1 = client[0], client[-1]
    wakes, switches, n = collections.Counter(), collections.Counter(), 0
    for comm, _tid, _cpu, t, ev, rest in evs:
        if not t0 <= float(t) <= t1:
            continue
        if ev == "sched_waking":
            target = name(re.search(r"comm=(.+?) pid=", rest).group(1))
            wakes[(name(comm), target)] += 1
            n += target == "client" and name(comm) != "client"
        elif ev == "sched_switch":
            m = re.search(r"prev_comm=(.+?) prev_pid=\d+ .*prev_state=(\S+)", rest)
            if m and m.group(2) != "R":
                switches[name(m.group(1))] += 1
    calls = max(n / per, 1)
    print(f"{calls:.0f} calls in {t1 - t0:.2f} s")
    print("wake-ups per call (waker -> woken):")
    for (a, b), c in wakes.most_common():
        if c / calls >= 0.05:
            print(f"  {c / calls:5.2f}  {a} -> {b}")
    print(f"  total {sum(c for c in wakes.values()) / calls:.1f}")
    print("voluntary context switches per call:")
    for a, c in switches.most_common():
        if c / calls >= 0.05:
            print(f"  {c / calls:5.2f}  {a}")


main()
