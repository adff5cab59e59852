// The gateway's admin UI: state and events from /admin/events (server-sent
// events; EventSource reconnects by itself after a gateway restart), the
// explain form from /admin/explain. No dependencies, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function td(v, cls) { return el("td", { class: cls }, v); }
function fmtTime(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }) + "." + String(ms % 1000).padStart(3, "0"); }

let previousRows = new Map();

function renderState(s) {
  $("#node").textContent = s.node_id;
  $("#ready").textContent = s.ready ? "yes" : "no";
  $("#registry").textContent = s.registry ? `${s.registry.kind}${s.registry.connected ? "" : " (disconnected)"}` : "-";
  $("#version").textContent = s.snapshot_version;

  const sb = $("#services tbody");
  sb.replaceChildren(...s.services.map((x) => el("tr", {},
    td(x.name), td(x.registered_instances, "num"), td(x.routable_instances, "num"),
    td(x.panic ? "PANIC" : "no", x.panic ? "failing" : ""), td(x.retries, "num"), td(x.retry_budget_exhausted, "num"))));

  // Endpoint stats by (service, instance id); the registry listing adds health.
  const stats = new Map();
  for (const svc of s.services) for (const e of svc.endpoints) stats.set(`${svc.name}/${e.instance_id}`, e);
  const rows = [];
  const seen = new Map();
  for (const i of s.instances || []) {
    const r = i.registration || {};
    const key = `${r.service}/${r.instance_id}`;
    const e = stats.get(key) || {};
    const ejection = e.ejected ? `${e.ejection} (${Math.ceil(e.ejected_for_ms / 1000)} s left)` : "-";
    const sig = [i.health, e.ejected, e.in_flight].join();
    const tr = el("tr", { "data-instance": key, "data-health": i.health },
      td(r.service), td(r.instance_id), td(r.address),
      td(i.health, i.health), td(e.weight ?? r.weight ?? "-", "num"), td(e.streaming ?? r.streaming ? "yes" : "no"),
      td(e.in_flight ?? "-", "num"), td(e.requests ?? "-", "num"), td(e.connect_failures ?? "-", "num"),
      td(e.failures ?? "-", "num"), td(ejection, e.ejected ? "ejected" : ""),
      td(e.latency_ms == null ? "-" : `${e.latency_ms.toFixed(1)} ms`, "num"));
    tr.title = i.health_detail || "";
    if (previousRows.has(key) && previousRows.get(key) !== sig) tr.classList.add("flash");
    seen.set(key, sig);
    rows.push(tr);
  }
  previousRows = seen;
  $("#instances tbody").replaceChildren(...rows);

  $("#routes tbody").replaceChildren(...(s.route_list || []).map((r) => el("tr", {},
    td(r.prefix), td(r.hosts.length ? r.hosts.join(", ") : "any"), td(r.service), td(r.visibility), td(r.stream ? "yes" : "no"))));
}

function addEvent(e, atTop = true) {
  const list = $("#events");
  const li = el("li", { "data-kind": e.kind },
    el("time", { datetime: new Date(e.at_ms).toISOString() }, fmtTime(e.at_ms)),
    el("span", { class: "kind" }, e.kind),
    `${e.service}/${e.instance_id}`, e.address ? ` (${e.address})` : "", e.detail ? ` - ${e.detail}` : "");
  if (atTop) list.prepend(li); else list.append(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function connect() {
  const es = new EventSource("/admin/events");
  const conn = $("#conn");
  es.addEventListener("open", () => { conn.textContent = "live"; conn.dataset.state = "open"; });
  es.addEventListener("error", () => { conn.textContent = "reconnecting..."; conn.dataset.state = "closed"; });
  es.addEventListener("hello", (m) => {
    const h = JSON.parse(m.data);
    $("#events").replaceChildren();
    for (const e of h.recent.slice().reverse()) addEvent(e, false);
  });
  es.addEventListener("state", (m) => renderState(JSON.parse(m.data)));
  es.addEventListener("event", (m) => addEvent(JSON.parse(m.data)));
}

function list(items, fmt) { return items.length ? el("ul", {}, ...items.map((x) => el("li", {}, fmt(x)))) : el("p", {}, "none"); }

async function explain(ev) {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const q = new URLSearchParams({ method: f.get("method"), host: f.get("host"), path: f.get("path"), listener: f.get("listener") });
  if (f.get("websocket")) q.set("websocket", "true");
  if (f.get("sse")) q.set("accept", "text/event-stream");
  const out = $("#explain-out");
  let body;
  try {
    const resp = await fetch(`/admin/explain?${q}`);
    body = await resp.json();
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, `request failed: ${e}`));
    return;
  }
  if (body.error) {
    out.replaceChildren(el("p", { class: "error" }, `${body.error.parameter ? body.error.parameter + ": " : ""}${body.error.message}`));
    return;
  }
  const parts = [];
  const o = body.outcome || {};
  parts.push(el("p", { class: "verdict" }, o.status ? `${o.status} ${o.code}: ${o.message}` : `${body.dispatch}: ${o.message}`));
  parts.push(el("p", {}, `Normalised path ${body.normalised_path}`));
  if (body.route) parts.push(el("p", {}, `Route ${body.route.prefix} -> ${body.route.service}: ${body.route.why}`));
  parts.push(el("h3", {}, "Other matching routes"), list(body.other_matching_routes, (r) => `${r.prefix} (${r.hosts.length ? r.hosts.join(", ") : "any host"}) -> ${r.service}: ${r.lost_because}`));
  const vis = Object.entries(body.visible_from).map(([l, r]) => `${l}: ${r ? r.service + " " + r.prefix : "no route"}`);
  parts.push(el("h3", {}, "Per listener"), list(vis, (x) => x));
  parts.push(el("h3", {}, "Candidates"), list(body.candidates, (c) => `${c.instance_id} (${c.address}) health ${c.health}, weight ${c.weight}, in flight ${c.in_flight}, ${c.dispatch}${c.detail ? " - " + c.detail : ""}`));
  parts.push(el("h3", {}, "Excluded"), list(body.excluded, (x) => `${x.instance_id} (${x.address}): ${x.reason} - ${x.detail}`));
  parts.push(el("details", {}, el("summary", {}, "JSON"), el("pre", {}, JSON.stringify(body, null, 2))));
  out.replaceChildren(...parts);
}

$("#explain").addEventListener("submit", explain);
connect();
