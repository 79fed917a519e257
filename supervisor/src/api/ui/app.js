// workmanager dashboard: plain JavaScript, no build step, no libraries.
//
// Data comes from the REST API with the same authentication as any client (a bearer token
// typed into the header and kept in sessionStorage for this tab only). The page never
// reloads: it tails workmanager.lifecycle, workmanager.infra.host and workmanager.infra.worker
// over SSE (fetch streams, so the Authorization header can be sent) and refreshes the tables
// when an event arrives; counters and RSS, which change without events, are also refreshed
// every 10 s. window.__wm exposes counts for the end-to-end test.
"use strict";

const wm = (window.__wm = { updates: 0, refreshes: 0, tailEvents: 0, errors: 0 });
let token = sessionStorage.getItem("wm-token") || "";

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(o.headers);
  const r = await fetch(path, o);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try {
      const b = await r.json();
      if (b && b.error) msg = b.error.code + ": " + b.error.message;
    } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.status === 204 ? null : r.json();
}

function showError(e) {
  const p = document.getElementById("error");
  if (e) {
    wm.errors++;
    p.textContent = String(e.message || e);
    p.hidden = false;
  } else {
    p.hidden = true;
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

// Rows keyed by id; a row whose content changed flashes.
function fill(tbodyId, items, key, render) {
  const tbody = document.querySelector("#" + tbodyId + " tbody");
  const old = new Map([...tbody.rows].map((r) => [r.dataset.key, r.dataset.sig]));
  tbody.textContent = "";
  for (const it of items) {
    const tr = document.createElement("tr");
    tr.dataset.key = key(it);
    render(tr, it);
    tr.dataset.sig = tr.textContent;
    if (old.has(tr.dataset.key) && old.get(tr.dataset.key) !== tr.dataset.sig) tr.className = "flash";
    tbody.appendChild(tr);
  }
}

async function refreshWorkers() {
  const v = await api("/v1/workers");
  fill("workers", v.workers, (w) => w.id, (tr, w) => {
    cell(tr, w.id, "mono");
    cell(tr, w.status, "status-" + w.status);
    cell(tr, w.topic);
    cell(tr, w.language);
    cell(tr, w.hostPid);
    cell(tr, w.counters.processed);
    cell(tr, w.counters.failed);
    cell(tr, w.counters.deadLettered);
    cell(tr, w.counters.inFlight);
    cell(tr, w.lastError ? w.lastError.errorType + ": " + w.lastError.message : "");
  });
}

async function refreshHosts() {
  const v = await api("/v1/hosts");
  fill("hosts", v.hosts, (h) => h.id, (tr, h) => {
    cell(tr, h.id, "mono");
    cell(tr, h.pid);
    cell(tr, h.language);
    cell(tr, h.isolation);
    cell(tr, (h.workers || []).length);
    cell(tr, bytes(h.rssBytes));
    cell(tr, h.restarts);
    cell(tr, h.crashes);
    cell(tr, h.sandbox ? (h.sandbox.layers || []).join(", ") : "");
  });
}

let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    try {
      await Promise.all([refreshWorkers(), refreshHosts()]);
      wm.refreshes++;
      showError(null);
    } catch (e) {
      showError(e);
    }
  }, 150);
}

// An SSE tail over fetch: calls onEvent(seq, event) and resumes after the last sequence
// number when the stream ends. Returns a function that stops it.
function tail(topic, opts, onEvent, onState) {
  const ctl = new AbortController();
  let after = opts.after;
  let earliest = !!opts.earliest;
  (async function loop() {
    while (!ctl.signal.aborted) {
      let q = "";
      if (after != null) q = "?after=" + after;
      else if (earliest) q = "?from=earliest";
      try {
        const r = await fetch("/v1/topics/" + encodeURIComponent(topic) + "/events" + q, {
          headers: headers({ Accept: "text/event-stream" }),
          signal: ctl.signal,
        });
        if (!r.ok) throw new Error("subscribe " + topic + ": " + r.status);
        onState && onState(true);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        let id = null;
        let data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, "");
            buf = buf.slice(nl + 1);
            if (line === "") {
              if (data.length) {
                if (id != null) after = id;
                let ev;
                try { ev = JSON.parse(data.join("\n")); } catch (_) { ev = data.join("\n"); }
                onEvent(id, ev);
              }
              id = null;
              data = [];
            } else if (line.startsWith("id:")) {
              id = parseInt(line.slice(3).trim(), 10);
            } else if (line.startsWith("data:")) {
              data.push(line.slice(5).replace(/^ /, ""));
            }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      onState && onState(false);
      await new Promise((res) => setTimeout(res, 1000));
    }
  })();
  return () => ctl.abort();
}

// Live updates: any lifecycle or infra event refreshes the tables.
const live = document.getElementById("live");
let liveStops = [];
function startLive() {
  liveStops.forEach((s) => s());
  let up = 0;
  const topics = ["workmanager.lifecycle", "workmanager.infra.host", "workmanager.infra.worker"];
  liveStops = topics.map((t) =>
    tail(t, {}, () => { wm.updates++; refresh(); }, (ok) => {
      up += ok ? 1 : -1;
      live.textContent = up > 0 ? "live" : "reconnecting…";
      live.className = "badge " + (up > 0 ? "live" : "down");
    })
  );
}

// Topic tail view.
let tailStop = null;
document.getElementById("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (tailStop) tailStop();
  const topic = document.getElementById("tail-topic").value.trim();
  const tbody = document.querySelector("#tail tbody");
  tbody.textContent = "";
  tailStop = tail(topic, { earliest: document.getElementById("tail-earliest").checked }, (seq, ev) => {
    wm.tailEvents++;
    const tr = document.createElement("tr");
    cell(tr, seq, "mono");
    cell(tr, ev.type);
    cell(tr, ev.id, "mono");
    const d = ev.data !== undefined ? ev.data : ev.data_base64;
    cell(tr, typeof d === "string" ? d : JSON.stringify(d), "data mono");
    tbody.insertBefore(tr, tbody.firstChild);
    while (tbody.rows.length > 200) tbody.deleteRow(-1);
  });
});

// Dead letters view.
function deadTopic() {
  const t = document.getElementById("dead-topic").value.trim();
  return t.endsWith("-dead") ? t : t + "-dead";
}

async function listDead() {
  const v = await api("/v1/dead-letters/" + encodeURIComponent(deadTopic()) + "?limit=500");
  fill("dead", v.deadLetters, (d) => String(d.seq), (tr, d) => {
    cell(tr, d.seq, "mono");
    cell(tr, d.id, "mono");
    cell(tr, d.type);
    cell(tr, d.originalTopic);
    cell(tr, d.reason);
    cell(tr, d.attempts);
    cell(tr, d.worker, "mono");
    cell(tr, d.time);
    cell(tr, d.error);
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.textContent = "Requeue";
    b.addEventListener("click", () => requeue({ seqs: [d.seq] }));
    td.appendChild(b);
    tr.appendChild(td);
  });
}

async function requeue(body) {
  try {
    const r = await api("/v1/dead-letters/" + encodeURIComponent(deadTopic()) + "/requeue", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    document.getElementById("dead-result").textContent =
      "requeued " + r.requeued + (r.events.length ? " (new seq " + r.events.map((x) => x.newSeq).join(", ") + ")" : "");
    showError(null);
  } catch (e) {
    showError(e);
  }
}

document.getElementById("dead-form").addEventListener("submit", (e) => {
  e.preventDefault();
  listDead().then(() => showError(null), showError);
});
document.getElementById("dead-all").addEventListener("click", () => requeue({ all: true }));

// Views: the hash picks one; no reloads.
function show() {
  const view = (location.hash || "#workers").slice(1);
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
}
window.addEventListener("hashchange", show);

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("wm-token", token);
  startLive();
  refresh();
});

show();
startLive();
refresh();
setInterval(refresh, 10000);
