#!/usr/bin/env python3
"""Wake-up timeline driver (docs/benchmarks.md, the event path's fourth pass).

usage: drive.py BIN_DIR invoke|one N
Starts BIN_DIR/workmanager on a loopback port with one native chaos worker (the fixture the
benches build: target/fixtures/native/chaos-*/libchaos.so, or WM_CHAOS_SO), warms up with 300
calls, writes the daemon's pid to $PID_FILE, sleeps $WAIT seconds (for a profiler to attach),
then makes N calls back to back: `invoke` = POST /v1/workers/{id}/invoke, `one` = a publish
whose reply is read on SSE before the next. BUS_DURABILITY passes through (default os).
"""
import base64, glob, http.client, io, json, os, socket, subprocess, sys, tempfile, time, zipfile

BIN = sys.argv[1]          # dir with workmanager + host-runner
MODE = sys.argv[2]         # invoke | one
N = int(sys.argv[3])
DUR = os.environ.get("BUS_DURABILITY", "os")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SO = os.environ.get("WM_CHAOS_SO") or next(iter(sorted(glob.glob(
    os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                 "fixtures/native/chaos-*/libchaos.so")))), None)
if not SO:
    raise SystemExit("no chaos fixture: run the compare bench once, or set WM_CHAOS_SO")
PID_FILE = os.environ.get("PID_FILE", os.path.join(tempfile.gettempdir(), "wm-wakeups.pid"))

def pkg():
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Chaos.Worker.nuspec", """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd"><metadata>
<id>Chaos.Worker</id><version>0.0.1</version><authors>t</authors><description>f</description>
<virtufinLibrary>chaos</virtufinLibrary></metadata></package>""")
        z.write(SO, "runtimes/linux-x64/native/libchaos.so")
    return b.getvalue()

d = tempfile.mkdtemp(prefix="wm12g-")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKMANAGER", "BUS_"))}
env.update(WORKMANAGER_LOG="warn", BUS_DURABILITY=DUR)
p = subprocess.Popen([f"{BIN}/workmanager", "serve", "--listen", f"127.0.0.1:{port}",
                      "--grpc-listen", "127.0.0.1:0", "--data-dir", d], env=env,
                     stdout=open(f"{d}/out.log", "w"), stderr=subprocess.STDOUT)
try:
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/v1/health"); c.getresponse().read(); break
        except OSError:
            time.sleep(0.05)
    c = http.client.HTTPConnection("127.0.0.1", port)
    def req(m, path, body=None, ct="application/json"):
        c.request(m, path, body=body, headers={"Content-Type": ct} if body is not None else {})
        r = c.getresponse(); return r.status, r.read()
    st, b = req("POST", "/v1/workers", json.dumps({"mimeType": "application/x-native-dll", "topic": "one.in",
        "codeSource": {"content": base64.b64encode(pkg()).decode()}}))
    assert st == 201, b
    wid = json.loads(b)["id"]
    st, b = req("POST", f"/v1/workers/{wid}/start"); assert st < 300, b
    ev = lambda i: json.dumps({"specversion": "1.0", "id": i, "source": "urn:bench", "type": "one.in",
        "datacontenttype": "application/json", "data": {"hello": "world", "n": 42}, "correlationid": "c-1"})
    sse = None
    if MODE == "one":
        sse = socket.create_connection(("127.0.0.1", port))
        sse.sendall(b"GET /v1/topics/one.in.reply/events HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() + b"\r\nAccept: text/event-stream\r\n\r\n")
        f = sse.makefile("rb"); sse.settimeout(5)
        def wait_reply(i):
            key = f'"id":"{i}"'.encode()
            while True:
                line = f.readline()
                if not line: raise SystemExit("sse closed")
                if os.environ.get("DEBUG"): print(line, flush=True)
                if line.startswith(b"data:") and key in line.replace(b" ", b""): return
    def one(i):
        if MODE == "invoke":
            st, b = req("POST", f"/v1/workers/{wid}/invoke", ev(f"i{i}"), "application/cloudevents+json"); assert st == 200, b
        else:
            st, b = req("POST", "/v1/topics/one.in/events", ev(f"e{i}"), "application/cloudevents+json"); assert st == 202, b
            wait_reply(f"e{i}")
    for i in range(300): one(f"w{i}")
    print(p.pid, flush=True)
    open(PID_FILE, "w").write(str(p.pid))
    time.sleep(float(os.environ.get("WAIT", "2")))
    lat = []
    t0 = time.perf_counter()
    for i in range(N):
        t = time.perf_counter(); one(i); lat.append(time.perf_counter() - t)
    tot = time.perf_counter() - t0
    lat.sort()
    print(f"{MODE} n={N} p50 {lat[len(lat)//2]*1e6:.0f} us p90 {lat[int(len(lat)*.9)]*1e6:.0f} us total {tot:.2f}s", flush=True)
finally:
    p.terminate(); p.wait()
    subprocess.run(["rm", "-rf", d])
