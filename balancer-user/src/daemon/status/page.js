// The status page: polls /status.json and redraws the tables. Plain DOM, no library.
"use strict";

const POLL_MS = 1500;
const CHART_W = 160;
const CHART_H = 32;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function num(v, digits) {
  if (v === undefined || v === null) return "–";
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return v.toFixed(i === 0 ? (digits ?? 1) : 1) + units[i];
}

function badge(text) {
  return el("span", { class: "badge " + text }, text);
}

// One polyline per series, each scaled to its own maximum.
function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", CHART_W);
  svg.setAttribute("height", CHART_H);
  if (points.length < 2) return svg;
  const t0 = points[0].t;
  const span = Math.max(points[points.length - 1].t - t0, 1);
  for (const series of ["new_flows", "bytes"]) {
    const max = Math.max(...points.map(p => p[series]), 1e-9);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", series === "new_flows" ? "flows" : "bytes");
    line.setAttribute("points", points.map(p =>
      ((p.t - t0) / span * (CHART_W - 2) + 1).toFixed(1) + "," +
      (CHART_H - 1 - p[series] / max * (CHART_H - 2)).toFixed(1)).join(" "));
    svg.append(line);
  }
  return svg;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function list(ul, items, empty) {
  ul.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, empty)]));
}

function render(status) {
  fill(document.querySelector("#services tbody"), status.services.map(s =>
    el("tr", { "data-service": s.service },
      el("td", {}, s.service), el("td", {}, s.mode),
      el("td", { class: "num" }, s.backends), el("td", { class: "num" }, s.active_backends))));

  fill(document.querySelector("#backends tbody"), status.backends.map(b => {
    const r = b.rates;
    const health = b.health ?? "unchecked";
    return el("tr", {
      "data-service": b.service, "data-backend": b.backend,
      "data-state": b.state, "data-health": health,
    },
      el("td", {}, b.service), el("td", {}, b.backend), el("td", {}, b.server_id ?? ""),
      el("td", { class: "state" }, badge(b.state)), el("td", { class: "health" }, badge(health)),
      el("td", { class: "num" }, b.weight),
      el("td", { class: "num" }, (b.share * 100).toFixed(1) + "%"),
      el("td", {}, b.failover_to ?? ""),
      el("td", { class: "num" }, num(r.new_flows)),
      el("td", { class: "num" }, num(r.packets_to)), el("td", { class: "num" }, num(r.packets_from)),
      el("td", { class: "num" }, num(r.bytes_to)), el("td", { class: "num" }, num(r.bytes_from)),
      el("td", { class: "num" }, num(r.cookie_hits)), el("td", { class: "num" }, num(r.cookie_misses)),
      el("td", {}, chart(b.chart)));
  }));

  list(document.getElementById("failover"), status.failover.map(f =>
    el("li", {}, `${f.service}: sessions of ${f.from} go to ${f.to}`)), "none");

  list(document.getElementById("transitions"), status.transitions.slice().reverse().map(t =>
    el("li", {}, `${new Date(t.at * 1000).toLocaleTimeString()} ${t.service} ${t.backend}: ` +
      `${t.from} → ${t.to} (${t.detail})`)), "none yet");
}

let polls = 0;

async function poll() {
  const updated = document.getElementById("updated");
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${(await response.text()).trim()}`);
    render(await response.json());
    polls++;
    updated.dataset.polls = polls;
    updated.className = "";
    updated.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    updated.className = "stale";
    updated.textContent = "not updated: " + e.message;
  }
  setTimeout(poll, POLL_MS);
}

poll();
