// twinline dashboard: renders the switch's status events (SSE) and its calls table.
"use strict";

const $ = (id) => document.getElementById(id);
let previous = null;  // {offered, at}: for the call rate
let serverNames = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(id, text) { $(id).textContent = text; }

function renderFigures(status) {
  const calls = status.calls;
  setText("live-calls", calls.live);
  const now = performance.now() / 1000;
  if (previous && now > previous.at) {
    const rate = Math.max(0, (calls.offered - previous.offered) / (now - previous.at));
    setText("call-rate", rate.toFixed(1));
  }
  previous = { offered: calls.offered, at: now };
  const decided = calls.answered + calls.rejected + calls.cancelled;
  setText("answer-ratio", decided ? `${Math.round((100 * calls.answered) / decided)} %` : "–");
  setText("setup-time", calls.setup_ms_mean == null ? "–" : `${calls.setup_ms_mean} ms`);
  const unprotected = calls.unprotected || 0;
  setText("unprotected", unprotected);
  $("unprotected-box").classList.toggle("alert", unprotected > 0);
  setText("takeovers", status.commands ? status.commands.takeovers : 0);
}

function renderServers(servers) {
  const box = $("servers");
  box.replaceChildren();
  for (const s of servers) {
    const load = s.capacity ? Math.min(100, (100 * s.primary) / s.capacity) : 0;
    const age = s.heartbeat_age_ms == null ? "–" : `${s.heartbeat_age_ms} ms`;
    const card = el("div", { class: `server ${s.state}`, id: `server-${s.name}`, "data-state": s.state },
      el("h3", {}, el("span", { class: "name" }, s.name), el("span", { class: "state" }, s.state)),
      el("div", { class: "bar", title: `load ${load.toFixed(1)} %` }, el("span", { style: `width:${load}%` })),
      el("dl", {},
        el("dt", {}, "primaries"), el("dd", { class: "primary" }, s.primary),
        el("dt", {}, "standbys"), el("dd", { class: "standby" }, s.standby),
        el("dt", {}, "load"), el("dd", {}, `${load.toFixed(1)} % of ${s.capacity}`),
        el("dt", {}, "heartbeat"), el("dd", { class: "heartbeat" }, age),
        el("dt", {}, "pid"), el("dd", {}, s.pid || "–")),
      el("div", { class: "controls" },
        s.state === "draining"
          ? el("button", { class: "undrain", onclick: () => act(s.name, "drain", "?off=1") }, "undrain")
          : el("button", { class: "drain", onclick: () => act(s.name, "drain", "") }, "drain"),
        " ",
        el("button", { class: "handover", onclick: () => act(s.name, "handover", "") }, "handover")));
    box.append(card);
  }
  const names = servers.map((s) => s.name);
  if (names.join() !== serverNames.join()) {
    serverNames = names;
    const select = $("filter-server");
    select.replaceChildren(el("option", { value: "" }, "every server"),
      ...names.map((n) => el("option", { value: n }, n)));
  }
}

function renderTimeline(entries) {
  const list = $("timeline");
  list.replaceChildren(...entries.map((e) => el("li", { class: e.kind, "data-kind": e.kind },
    el("time", {}, new Date(e.at * 1000).toLocaleTimeString()), e.text)));
}

async function act(server, action, query) {
  const token = $("token").value.trim();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const url = `/api/servers/${encodeURIComponent(server)}/${action}${query}`;
  const what = `${query ? "undrain" : action} ${server}`;
  try {
    const resp = await fetch(url, { method: "POST", headers });
    const text = await resp.text();
    if (resp.ok) setText("message", `${what}: done`);
    else setText("message", `${what} refused (${resp.status}): ${text}`);
  } catch (err) {
    setText("message", `${what} failed: ${err}`);
  }
}

async function refreshCalls() {
  const params = new URLSearchParams({
    server: $("filter-server").value, number: $("filter-number").value.trim(),
    state: $("filter-state").value, limit: "200",
  });
  try {
    const resp = await fetch(`/api/calls?${params}`);
    if (!resp.ok) return;
    const table = await resp.json();
    if (table.total > table.calls.length) setText("calls-total", `${table.calls.length} of ${table.total}`);
    else setText("calls-total", `${table.total}`);
    $("calls").replaceChildren(...table.calls.map((c) => el("tr", {},
      el("td", {}, c.id), el("td", {}, c.caller), el("td", {}, c.dialled), el("td", {}, c.state),
      el("td", {}, c.service || "–"), el("td", {}, c.primary || "–"),
      el("td", { class: c.standby ? "" : "none" }, c.standby || "none"),
      el("td", {}, c.epoch == null ? "–" : c.epoch))));
  } catch (err) { /* the feed indicator says the switch is gone */ }
}

async function refreshServices() {
  try {
    const resp = await fetch("/api/services?window=3600");
    if (!resp.ok) return;
    const figures = await resp.json();
    $("services").replaceChildren(...figures.services.map((s) => el("tr", {},
      el("td", {}, s.service), el("td", {}, s.calls), el("td", {}, s.answered),
      el("td", { class: s.refused ? "none" : "" }, s.refused))));
    setText("prepaid-spend", figures.prepaid.spend);
    setText("prepaid-debits", figures.prepaid.debits);
  } catch (err) { /* the feed indicator says the switch is gone */ }
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("status", (event) => {
    const status = JSON.parse(event.data);
    $("feed").textContent = "live";
    $("feed").className = "feed up";
    renderFigures(status);
    renderServers(status.servers);
    renderTimeline(status.timeline || []);
  });
  source.onerror = () => {
    $("feed").textContent = "switch unreachable: retrying";
    $("feed").className = "feed down";
  };
}

$("token").value = sessionStorage.getItem("twinline-token") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("twinline-token", $("token").value));
for (const id of ["filter-server", "filter-state"]) $(id).addEventListener("change", refreshCalls);
$("filter-number").addEventListener("input", refreshCalls);
$("filters").addEventListener("submit", (e) => e.preventDefault());
connect();
refreshCalls();
setInterval(refreshCalls, 2000);
refreshServices();
setInterval(refreshServices, 10000);
