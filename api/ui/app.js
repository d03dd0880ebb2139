// tunsocks' page: a client of the Clash-compatible API and nothing else.
// Plain DOM, no framework, no build step; every value from the API is set
// with textContent, never parsed as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  secret: localStorage.getItem("tunsocks-secret") || "",
  conns: [],        // the latest snapshot's connections
  prev: new Map(),  // id -> {down, t} of the previous snapshot, for rates
  rates: new Map(), // id -> bytes/s down
  traffic: [],      // [{up, down}] one per second, newest last
  sockets: [],
};
const HISTORY = 120;
// The API's root is the page's parent (/ui/ -> /), so a reverse proxy may
// serve both under a prefix.
const apiBase = new URL("..", location.href);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

function hostPort(ip, port) {
  return ip.includes(":") ? "[" + ip + "]:" + port : ip + ":" + port;
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (state.secret) headers.Authorization = "Bearer " + state.secret;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(new URL(path, apiBase), Object.assign({}, opts, { headers }));
  if (res.status === 401) {
    showLogin("wrong or missing secret");
    throw new Error("unauthorized");
  }
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).message || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res.status === 204 ? null : res.json();
}

function wsURL(path) {
  const u = new URL(path, apiBase);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (state.secret) u.searchParams.set("token", state.secret);
  return u.toString();
}

// stream opens a WebSocket and reopens it when it drops.
function stream(path, onMessage) {
  let ws;
  let closed = false;
  const open = () => {
    ws = new WebSocket(wsURL(path));
    ws.onopen = () => setStatus(true);
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = () => {
      if (closed) return;
      setStatus(false);
      setTimeout(open, 2000);
    };
  };
  open();
  const handle = { close() { closed = true; ws.close(); } };
  state.sockets.push(handle);
  return handle;
}

function setStatus(live) {
  const s = $("#status");
  s.textContent = live ? "live" : "reconnecting…";
  s.className = "status " + (live ? "live" : "down");
}

function showLogin(why) {
  for (const s of state.sockets) s.close();
  state.sockets = [];
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = why || "";
  $("#secret").focus();
}

// ---- connections ----

function connText(c) {
  const m = c.metadata;
  return [m.process, m.processPath, m.sourceIP, m.host, m.destinationIP, m.destinationPort,
    c.rule, c.rulePayload, m.tunsocksRule, c.chains.join(" "), m.network, m.inboundName].join(" ").toLowerCase();
}

function renderConnections() {
  const filter = $("#filter").value.trim().toLowerCase();
  const now = Date.now();
  const tbody = $("#connections tbody");
  const rows = [];
  let shown = 0;
  for (const c of state.conns) {
    if (filter && !connText(c).includes(filter)) continue;
    shown++;
    const m = c.metadata;
    const tr = el("tr");
    tr.dataset.id = c.id;
    tr.dataset.process = m.process;
    const proc = el("td", m.process || "—", "process");
    if (m.processPath) proc.title = m.processPath + (m.uid >= 0 ? " (uid " + m.uid + ")" : "");
    tr.append(proc);
    tr.append(el("td", hostPort(m.sourceIP, m.sourcePort), "source"));
    const dst = el("td", (m.host || m.destinationIP) + ":" + m.destinationPort, "destination wrap");
    dst.title = m.network + (m.host && m.destinationIP ? " " + hostPort(m.destinationIP, m.destinationPort) : "") +
      (m.dnsMode === "fakeip" ? " (fake IP)" : "");
    tr.append(dst);
    const rule = el("td", c.rule ? c.rule + (c.rulePayload ? "(" + c.rulePayload + ")" : "") : "default", "rule");
    rule.title = m.tunsocksRule || "";
    tr.append(rule);
    const out = el("td", c.chains.join(" → "), "outbound");
    if (m.upstreamAddr) out.title = "via " + m.upstreamAddr;
    tr.append(out);
    tr.append(el("td", bytes(c.upload), "num"));
    tr.append(el("td", bytes(c.download), "num"));
    tr.append(el("td", bytes(state.rates.get(c.id) || 0) + "/s", "num"));
    tr.append(el("td", duration(now - Date.parse(c.start)), "num"));
    const td = el("td");
    const btn = el("button", "✕", "close");
    btn.type = "button";
    btn.title = "close (the app sees a reset)";
    btn.addEventListener("click", () => closeConn(c.id, tr));
    td.append(btn);
    tr.append(td);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  $("#conn-count").textContent = filter ? shown + " of " + state.conns.length : String(state.conns.length);
}

async function closeConn(id, tr) {
  tr.classList.add("closing");
  try {
    await api("connections/" + encodeURIComponent(id), { method: "DELETE" });
  } catch (e) {
    logLine("error", "closing " + id + ": " + e.message);
  }
}

function onConnections(msg) {
  const now = Date.now();
  const conns = msg.connections || [];
  const next = new Map();
  state.rates = new Map();
  for (const c of conns) {
    const p = state.prev.get(c.id);
    if (p && now > p.t) state.rates.set(c.id, Math.max(0, (c.download - p.down) * 1000 / (now - p.t)));
    next.set(c.id, { down: c.download, t: now });
  }
  state.prev = next;
  state.conns = conns;
  $("#totals").textContent = "↑ " + bytes(msg.uploadTotal) + "  ↓ " + bytes(msg.downloadTotal);
  renderConnections();
}

// ---- throughput ----

function onTraffic(t) {
  state.traffic.push(t);
  if (state.traffic.length > HISTORY) state.traffic.shift();
  $("#rate").textContent = "↑ " + bytes(t.up) + "/s  ↓ " + bytes(t.down) + "/s";
  drawGraph();
}

function drawGraph() {
  const c = $("#graph");
  const ctx = c.getContext("2d");
  const w = c.width, h = c.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1024, ...state.traffic.map((t) => Math.max(t.up, t.down)));
  const styles = getComputedStyle(document.documentElement);
  ctx.strokeStyle = styles.getPropertyValue("--line");
  ctx.fillStyle = styles.getPropertyValue("--muted");
  ctx.font = "11px sans-serif";
  ctx.beginPath();
  ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2);
  ctx.stroke();
  ctx.fillText(bytes(max) + "/s", 4, 12);
  // The window grows with the samples, from 30 s to HISTORY.
  const span = Math.min(HISTORY, Math.max(30, state.traffic.length)) - 1;
  const line = (key, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    state.traffic.forEach((t, i) => {
      const x = w - (state.traffic.length - 1 - i) * (w / span);
      const y = h - 2 - (t[key] / max) * (h - 16);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  line("up", styles.getPropertyValue("--up"));
  line("down", styles.getPropertyValue("--down"));
}

// ---- rules and outbounds ----

async function loadRules() {
  const { rules } = await api("rules");
  const rows = rules.map((r) => {
    const tr = el("tr");
    tr.dataset.index = r.index;
    tr.append(el("td", r.index + 1, "num"));
    const text = el("td", r.line || (r.type + "," + r.payload), "wrap");
    text.title = r.source || "";
    tr.append(text);
    tr.append(el("td", r.proxy));
    tr.append(el("td", r.extra ? r.extra.hitCount : 0, "num hits"));
    return tr;
  });
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "no rules: every flow takes the default outbound", "muted");
    td.colSpan = 4;
    tr.append(td);
    rows.push(tr);
  }
  $("#rules tbody").replaceChildren(...rows);
}

async function loadProxies() {
  const { proxies } = await api("proxies");
  const names = Object.keys(proxies).filter((n) => n !== "GLOBAL").sort((a, b) => {
    const rank = (n) => (n === "DIRECT" ? 0 : n === "REJECT" ? 1 : 2);
    return rank(a) - rank(b) || a.localeCompare(b);
  });
  const rows = names.map((n) => {
    const p = proxies[n];
    const tr = el("tr");
    tr.dataset.name = n;
    tr.append(el("td", n));
    tr.append(el("td", p.type));
    tr.append(el("td", p.chain ? p.chain.join(" → ") : (p.server || ""), "server"));
    tr.append(el("td", p.flows, "num"));
    tr.append(el("td", bytes(p.up), "num"));
    tr.append(el("td", bytes(p.down), "num"));
    const last = p.history.length ? p.history[p.history.length - 1].delay : null;
    tr.append(el("td", last === null ? "" : last === 0 ? "failed" : last + " ms", "num delay"));
    const td = el("td");
    if (n !== "REJECT") {
      const b = el("button", "test");
      b.type = "button";
      b.addEventListener("click", () => testDelay(n, b));
      td.append(b);
    }
    tr.append(td);
    return tr;
  });
  $("#proxies tbody").replaceChildren(...rows);
}

async function testDelay(name, button) {
  button.disabled = true;
  try {
    const r = await api("proxies/" + encodeURIComponent(name) + "/delay?timeout=5000&url=" +
      encodeURIComponent("http://www.gstatic.com/generate_204"));
    logLine("info", name + ": " + r.delay + " ms");
  } catch (e) {
    logLine("warning", name + ": " + e.message);
  } finally {
    button.disabled = false;
    loadProxies().catch(() => {});
  }
}

// ---- log ----

let logStream = null;

function logLine(type, text) {
  const li = el("li", new Date().toLocaleTimeString() + " " + type.padEnd(7) + " " + text, type);
  const log = $("#log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(li);
  while (log.children.length > 300) log.firstChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function openLog() {
  if (logStream) logStream.close();
  logStream = stream("logs?level=" + $("#log-level").value, (m) => logLine(m.type, m.payload));
}

// ---- start ----

async function start() {
  let v;
  try {
    v = await api("version");
  } catch (e) {
    if (e.message !== "unauthorized") $("#status").textContent = "API unreachable: " + e.message;
    return;
  }
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#version").textContent = v.version;
  const cfg = await api("configs");
  $("#mode").value = cfg.mode;
  stream("connections?interval=1000", onConnections);
  stream("traffic", onTraffic);
  openLog();
  const refresh = () => {
    loadRules().catch((e) => logLine("error", "rules: " + e.message));
    loadProxies().catch((e) => logLine("error", "proxies: " + e.message));
  };
  refresh();
  setInterval(refresh, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#filter").addEventListener("input", renderConnections);
  $("#close-all").addEventListener("click", () => {
    api("connections", { method: "DELETE" }).catch((e) => logLine("error", e.message));
  });
  $("#mode").addEventListener("change", (ev) => {
    api("configs", { method: "PATCH", body: JSON.stringify({ mode: ev.target.value }) })
      .then(() => logLine("info", "mode: " + ev.target.value))
      .catch((e) => logLine("error", "mode: " + e.message));
  });
  $("#log-level").addEventListener("change", openLog);
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.secret = $("#secret").value;
    localStorage.setItem("tunsocks-secret", state.secret);
    start();
  });
  const fromURL = new URLSearchParams(location.hash.slice(1)).get("secret");
  if (fromURL !== null) {
    state.secret = fromURL;
    localStorage.setItem("tunsocks-secret", fromURL);
    history.replaceState(null, "", location.pathname);
  }
  start();
});
