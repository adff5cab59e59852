// The gateway's admin UI: state, events and log lines from /admin/events
// (server-sent events; EventSource reconnects by itself after a gateway
// restart), the other replicas from /admin/replicas (fetched when a `state`
// arrives, at most one request at a time and one a second: no polling of
// its own), the explain form from /admin/explain. No dependencies, no build
// step.
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

  renderRegistry(s.registry);
  refreshReplicas();

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

// Registry and sync: whatever RegistryStatus carries (Kafka counters, lag
// when there is one), flattened, so a new field shows without a UI change.
function renderRegistry(r) {
  const out = $("#registry-state");
  if (!r) { out.replaceChildren(); return; }
  const rows = [];
  const yesNo = (v) => el("dd", { class: v ? "ok" : "bad" }, v ? "yes" : "no");
  const pair = (k, v) => { rows.push(el("dt", {}, k), v instanceof Node ? v : el("dd", {}, v ?? "-")); };
  pair("Registry", r.kind);
  rows.push(el("dt", {}, "Connected"), Object.assign(yesNo(r.connected), { id: "registry-connected" }));
  pair("Last error", r.last_error || "none");
  if (r.watch) {
    pair("Watch wake-ups", r.watch.wakeups);
    pair("Watch errors", r.watch.errors);
    pair("Last read", r.watch.since_last_read_s == null ? "never" : `${r.watch.since_last_read_s.toFixed(1)} s ago`);
  }
  if (r.sync) {
    rows.push(el("dt", { class: "group" }, "Kafka sync"));
    const flat = [];
    const walk = (o, prefix) => {
      for (const [k, v] of Object.entries(o)) {
        if (v && typeof v === "object" && !Array.isArray(v)) walk(v, `${prefix}${k}.`);
        else flat.push([`${prefix}${k}`, v]);
      }
    };
    walk(r.sync, "");
    for (const [k, v] of flat) {
      if (k === "connected") rows.push(el("dt", {}, "connected"), yesNo(v));
      else if (k === "consumer_lag") pair("consumer lag", v < 0 ? "unknown (no statistics yet)" : `${v} events`);
      else pair(k.replace(/^counters\./, "").replaceAll("_", " "), v === null ? "none" : String(v));
    }
  } else {
    pair("Kafka sync", "off");
  }
  out.replaceChildren(...rows);
}

// Every replica's view: /admin/replicas is fetched by this gateway from each
// peer (no CORS); one column per replica, one row per instance.
let replicasBusy = false;
let replicasAgain = false;
let replicasLast = 0;
async function refreshReplicas() {
  if (replicasBusy) { replicasAgain = true; return; }
  const wait = replicasLast + 1000 - Date.now();
  replicasBusy = true;
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  try {
    const resp = await fetch("/admin/replicas");
    const body = await resp.json();
    renderReplicas(body);
    const d = body.discovery || {};
    $("#replicas-note").textContent = d.consul_error ? `(Consul discovery failed: ${d.consul_error})`
      : d.consul !== undefined ? `(${d.static} listed, ${d.consul} found in Consul)` : "";
  } catch (e) {
    $("#replicas-note").textContent = `(not refreshed: ${e.message || e})`;
  } finally {
    replicasLast = Date.now();
    replicasBusy = false;
    if (replicasAgain) { replicasAgain = false; refreshReplicas(); }
  }
}

function renderReplicas(body) {
  const reps = body.replicas || [];
  const name = (r) => (r.view && r.view.node_id) || r.url;
  const head = el("tr", {}, el("th", { scope: "col" }, "Instance"), ...reps.map((r) => {
    const v = r.view || {};
    const reg = v.registry;
    const lines = [el("span", { class: "node" }, name(r), r.self ? " (this replica)" : "")];
    if (r.url && r.url !== name(r)) lines.push(el("span", { class: "note url" }, r.url));
    const link = (up) => el("span", { class: up ? "ok" : "bad" }, up ? "connected" : "disconnected");
    if (r.up) {
      lines.push(el("span", { class: "ok" }, "up"), ` ${r.latency_ms} ms; `,
        v.ready ? "ready" : el("span", { class: "bad" }, "not ready"), el("br"));
      if (reg) lines.push(`${reg.kind} `, link(reg.connected));
      if (reg && reg.sync) lines.push(" / kafka ", link(reg.sync.connected));
      lines.push(el("br"), `snapshot ${v.snapshot_version}, ${v.total_services} services`);
    } else {
      lines.push(el("span", { class: "bad" }, "down"), el("br"), el("span", { class: "error" }, r.error || "no answer"));
    }
    return el("th", { scope: "col", "data-replica": name(r), "data-up": String(!!r.up) }, ...lines);
  }));
  // Health per replica: the registry listing's, marked when ejected there.
  const keys = new Set();
  const cells = reps.map((r) => {
    const m = new Map();
    if (!r.up) return m;
    const ejected = new Map();
    for (const svc of r.view.services || []) for (const e of svc.endpoints || []) ejected.set(`${svc.name}/${e.instance_id}`, e.ejected ? e.ejection : null);
    for (const i of r.view.instances || []) {
      const reg = i.registration || {};
      const key = `${reg.service}/${reg.instance_id}`;
      keys.add(key);
      m.set(key, { health: i.health, ejected: ejected.get(key) });
    }
    return m;
  });
  const rows = [...keys].sort().map((key) => el("tr", { "data-instance": key }, el("th", { scope: "row" }, key),
    ...reps.map((r, n) => {
      const attrs = { "data-replica": name(r) };
      if (!r.up) return el("td", { ...attrs, class: "unknown-state" }, "?");
      const c = cells[n].get(key);
      if (!c) return el("td", { ...attrs, class: "absent", "data-health": "absent" }, "absent");
      return el("td", { ...attrs, class: c.health, "data-health": c.health }, c.health, c.ejected ? ` (ejected: ${c.ejected})` : "");
    })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: reps.length + 1, class: "note" }, "no instances registered on any replica")));
  $("#replicas thead").replaceChildren(head);
  $("#replicas tbody").replaceChildren(...rows);
}

// The log pane: lines from the gateway's LogFeed, with the request id when
// the line was logged inside a request.
function logText(l) {
  return [l.level, l.target, l.message, l.request_id || "", JSON.stringify(l.fields || {})].join(" ").toLowerCase();
}

function applyLogFilter(li) {
  const f = $("#log-filter").value.trim().toLowerCase();
  li.hidden = f !== "" && !li.dataset.text.includes(f);
}

function addLog(l, atTop = true) {
  const list = $("#logs");
  const fields = Object.entries(l.fields || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  const li = el("li", { "data-level": l.level, "data-request-id": l.request_id || undefined },
    el("time", { datetime: new Date(l.at_ms).toISOString() }, fmtTime(l.at_ms)),
    el("span", { class: "level" }, l.level),
    l.request_id ? el("span", { class: "rid", title: "request id" }, l.request_id) : "",
    `${l.message} `, el("span", { class: "fields" }, fields), el("span", { class: "note" }, ` ${l.target}`));
  li.dataset.text = logText(l);
  applyLogFilter(li);
  if (atTop) list.prepend(li); else list.append(li);
  while (list.children.length > 500) list.lastChild.remove();
}

$("#log-filter").addEventListener("input", () => { for (const li of $("#logs").children) applyLogFilter(li); });

function connect() {
  const es = new EventSource("/admin/events");
  const conn = $("#conn");
  es.addEventListener("open", () => { conn.textContent = "live"; conn.dataset.state = "open"; });
  es.addEventListener("error", () => { conn.textContent = "reconnecting..."; conn.dataset.state = "closed"; });
  es.addEventListener("hello", (m) => {
    const h = JSON.parse(m.data);
    $("#events").replaceChildren();
    for (const e of h.recent.slice().reverse()) addEvent(e, false);
    $("#logs").replaceChildren();
    for (const l of (h.logs || []).slice().reverse()) addLog(l, false);
  });
  es.addEventListener("log", (m) => addLog(JSON.parse(m.data)));
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
