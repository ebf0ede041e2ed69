// The tunnel dashboard: polls the status API every 2 s and updates one
// table row per host in place.  Host-provided text only ever goes through
// textContent, never innerHTML.
"use strict";

const POLL_MS = 2000;
const DAY_MS = 86400000;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const rows = new Map();        // host -> {tr, cells}
const COLUMNS = ["host", "state", "address", "rtt", "throughput", "today", "backup", "cert",
                 "problems", "actions"];

function ago(iso, now) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

function sparkline(history, now) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", "80");
  svg.setAttribute("height", "18");
  svg.setAttribute("viewBox", "0 0 80 18");
  const start = now - 3600000;
  const points = history.filter(([t]) => Date.parse(t) >= start);
  const top = Math.max(1, ...points.map(([, b]) => b));
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", points.map(([t, b]) =>
    `${((Date.parse(t) - start) / 3600000 * 80).toFixed(1)},${(17 - b / top * 16).toFixed(1)}`
  ).join(" "));
  svg.append(line);
  return svg;
}

function post(host, action) {
  const message = document.getElementById("message");
  return fetch(`hosts/${encodeURIComponent(host)}/${action}`, {
    method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": csrf},
  }).then(r => r.json().then(body => {
    message.className = r.ok ? "" : "error";
    message.textContent = !r.ok ? `${host}: ${body.error}`
      : action === "ping" ? `${host}: ${body.received}/${body.sent} answers, ` +
                            `avg ${body.avg.toFixed(1)} ms`
      : `${host}: tunnel dropped`;
  })).catch(e => { message.className = "error"; message.textContent = `${host}: ${e}`; });
}

function row(host) {
  if (rows.has(host)) return rows.get(host);
  const tr = document.createElement("tr");
  tr.dataset.host = host;
  const cells = {};
  for (const name of COLUMNS) {
    cells[name] = tr.insertCell();
    cells[name].className = name;
  }
  for (const action of ["ping", "drop"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = action;
    button.textContent = action === "ping" ? "Ping" : "Drop";
    button.addEventListener("click", () => {
      if (action === "drop" && !confirm(`Drop the tunnel of ${host}?`)) return;
      post(host, action);
    });
    cells.actions.append(button);
  }
  document.querySelector("#hosts tbody").append(tr);
  const entry = {tr, cells};
  rows.set(host, entry);
  return entry;
}

function problemList(list, problems) {
  list.replaceChildren(...problems.map(p => {
    const li = document.createElement("li");
    li.textContent = p;
    return li;
  }));
  return list;
}

function show(h, now) {
  const {tr, cells} = row(h.host);
  tr.className = h.connected ? "connected" : "offline";
  cells.host.textContent = h.host;
  cells.state.textContent = h.connected
    ? `connected${h.connected_since ? ` for ${ago(h.connected_since, now)}` : ""}`
    : h.last_seen ? `last seen ${ago(h.last_seen, now)} ago` : "never seen";
  cells.address.textContent = h.address || "—";
  cells.rtt.textContent = h.rtt_ms == null ? "—" : `${h.rtt_ms.toFixed(1)} ms`;
  cells.throughput.replaceChildren(`${bytes(h.throughput_bps || 0)}/s`,
                                   sparkline(h.history || [], now));
  cells.today.textContent = bytes(h.bytes_today || 0);
  const b = h.last_backup;
  cells.backup.className = b && !b.ok ? "backup failed" : "backup";
  cells.backup.textContent = b ? `${b.ok ? "ok" : "failed"}, ${ago(b.at, now)} ago` : "—";
  cells.backup.title = b ? b.detail || "" : "";
  const expires = h.certificate_expires && Date.parse(h.certificate_expires);
  const days = expires ? (expires - now) / DAY_MS : null;
  cells.cert.className = days == null ? "cert" : days < 0 ? "cert expired"
                       : days < 30 ? "cert expiring" : "cert";
  cells.cert.textContent = days == null ? "—"
    : `${h.certificate_expires.slice(0, 10)} (${days < 0 ? "expired" : `${Math.floor(days)} d`})`;
  cells.problems.replaceChildren(problemList(document.createElement("ul"), h.problems || []));
  for (const button of cells.actions.querySelectorAll("button")) {
    button.disabled = !h.connected;
  }
}

// Behind BackupPC's login the API says who is signed in: only BackupPC's
// admins may drop a tunnel (the server checks; the button just says so).
function showViewer(viewer) {
  const line = document.getElementById("viewer");
  line.hidden = !viewer;
  if (!viewer) return;
  line.textContent = `Signed in to BackupPC as ${viewer.name}` +
    (viewer.admin ? " (admin)" : ": your hosts only");
  for (const button of document.querySelectorAll("button.drop")) {
    button.hidden = !viewer.admin;
  }
}

async function load() {
  const answer = await fetch("../api/v1/hosts", {credentials: "same-origin", cache: "no-store"});
  if (!answer.ok) throw new Error(`the API answered ${answer.status}`);
  return answer.json();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const data = await load();
    const now = Date.now();
    const hosts = new Set(data.hosts.map(h => h.host));
    for (const [host, {tr}] of rows) {
      if (!hosts.has(host)) { tr.remove(); rows.delete(host); }
    }
    data.hosts.forEach(h => show(h, now));
    showViewer(data.viewer);
    // What `bpctunnel check` finds wrong with the server's own files.
    problemList(document.getElementById("server-problems"), data.server_problems || []);
    status.className = "";
    status.textContent = `${data.hosts.filter(h => h.connected).length} of ` +
      `${data.hosts.length} connected; updated ${new Date(now).toLocaleTimeString()}`;
  } catch (e) {
    status.className = "error";
    status.textContent = `Cannot reach the server: ${e.message}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
