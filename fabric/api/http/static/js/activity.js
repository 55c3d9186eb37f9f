// Activity: live figures from the gateway's own metrics (refreshed while the tab is open),
// the caller's query history (shapes and timings only), running queries with cancel and
// the audit log (administrators).

import { ApiError, get, post, seg } from "./api.js";
import { byId, cellText, el, facts, fill } from "./dom.js";
import { isAdmin } from "./store.js";
import { notify } from "./notice.js";

const REFRESH_MS = 5000;
let timer = null;
let started = false;
// The gateway may have no running-queries endpoint: then the panel stays hidden.
let runningAvailable = true;

export function start() {
  if (!started) {
    started = true;
    byId("act-reload").addEventListener("click", reload);
  }
  runningAvailable = true;
}

export function shown() {
  reload();
  if (timer === null) {
    timer = setInterval(() => {
      if (byId("tab-activity").hidden || byId("app").hidden) return;
      loadStats();
      if (isAdmin() && runningAvailable) loadRunning();
    }, REFRESH_MS);
  }
}

export function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function reload() {
  loadStats();
  loadHistory();
  byId("act-running-box").hidden = !isAdmin() || !runningAvailable;
  byId("act-audit-box").hidden = !isAdmin();
  if (isAdmin()) {
    if (runningAvailable) loadRunning();
    loadAudit();
  }
}

function figure(label, value, key) {
  return el("div", { class: "figure", dataset: { figure: key } }, el("span", { class: "figure-value" }, value), el("span", { class: "figure-label" }, label));
}

const bound = (v) => (v === null || v === undefined ? "—" : `≤ ${Number(v)} ms`);
const ms = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} ms`);

async function loadStats() {
  const target = byId("act-stats");
  try {
    const stats = await get("/stats");
    const latency = stats.latency_ms || {};
    const ratio = stats.cache_hit_ratio;
    fill(
      target,
      el(
        "div",
        { class: "figures" },
        figure("cache hit ratio", ratio === null || ratio === undefined ? "—" : `${(ratio * 100).toFixed(1)} %`, "cache_hit_ratio"),
        // The gateway answers each percentile's histogram bucket: an upper bound.
        figure("latency p50", bound(latency.p50), "p50"),
        figure("latency p95", bound(latency.p95), "p95"),
        figure("latency p99", bound(latency.p99), "p99"),
        figure("queries", cellText(stats.queries_total ?? "—"), "queries_total"),
      ),
      el("h4", {}, "Purges"),
      facts(stats.purges || {}, "facts purges"),
      el("p", { class: "muted" }, `updated ${new Date().toLocaleTimeString()}`),
    );
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

function table(className, headings, rows) {
  return el(
    "table",
    { class: className },
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

async function loadHistory() {
  const target = byId("act-history");
  try {
    const data = await get("/history");
    const entries = Array.isArray(data) ? data : data.history || data.queries || [];
    if (!entries.length) {
      fill(target, el("p", { class: "empty" }, "No queries yet."));
      return;
    }
    fill(
      target,
      table(
        "history",
        ["at", "connection", "SQL shape", "rows", "time", "cache", "status"],
        entries.map((h) =>
          el(
            "tr",
            {},
            el("td", { class: "nowrap" }, when(h.at)),
            el("td", {}, cellText(h.connection)),
            el("td", { class: "sql-shape" }, el("code", {}, cellText(h.sql_shape))),
            el("td", { class: "n" }, cellText(h.rows)),
            el("td", { class: "n" }, ms(h.elapsed_ms)),
            el("td", {}, h.from_cache ? "cache" : "source"),
            el("td", {}, cellText(h.status)),
          ),
        ),
      ),
    );
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

async function loadRunning() {
  const target = byId("act-running");
  try {
    const data = await get("/running");
    const queries = data.queries || [];
    if (!queries.length) {
      fill(target, el("p", { class: "empty" }, "Nothing running."));
      return;
    }
    fill(
      target,
      table(
        "running",
        ["started", "principal", "connection", "SQL shape", "phase", "rows", "time", ""],
        queries.map((q) => {
          const cell = el("td", {});
          cell.append(
            el(
              "button",
              {
                type: "button",
                class: "danger cancel-query",
                onclick: async () => {
                  try {
                    const answer = await post(`/running/${seg(q.id)}/cancel`, {});
                    const outcome = answer.cancelled ? "cancelled" : "had already finished";
                    fill(cell, outcome);
                    notify(`The query on ${q.connection} ${outcome}.`);
                  } catch (error) {
                    fill(cell, el("span", { class: "error" }, error.message));
                  }
                },
              },
              "Cancel",
            ),
          );
          return el(
            "tr",
            { class: "running-query", dataset: { id: q.id } },
            el("td", { class: "nowrap" }, when(q.started_at)),
            el("td", {}, cellText(q.principal)),
            el("td", {}, cellText(q.connection)),
            el("td", { class: "sql-shape" }, el("code", {}, cellText(q.sql_shape))),
            el("td", {}, cellText(q.phase ?? "")),
            el("td", { class: "n" }, cellText(q.rows ?? "")),
            el("td", { class: "n" }, ms(q.elapsed_ms)),
            cell,
          );
        }),
      ),
    );
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      runningAvailable = false;
      byId("act-running-box").hidden = true;
      return;
    }
    fill(target, el("p", { class: "error" }, error.message));
  }
}

/** An ISO 8601 time as `2024-01-01 10:00:00+00:00` (no fractions: the list is for people). */
function when(value) {
  return typeof value === "string" ? value.replace("T", " ").replace(/\.\d+/, "") : cellText(value);
}

function details(object) {
  return Object.entries(object || {})
    .map(([key, value]) => `${key}=${cellText(value)}`)
    .join(", ");
}

async function loadAudit() {
  const target = byId("act-audit");
  try {
    const data = await get("/audit?limit=50");
    const events = data.events || [];
    if (!events.length) {
      fill(target, el("p", { class: "empty" }, "No events."));
      return;
    }
    fill(
      target,
      table(
        "audit",
        ["at", "actor", "action", "connection", "stage", "details"],
        events.map((e) =>
          el(
            "tr",
            {},
            el("td", { class: "nowrap" }, when(e.at)),
            el("td", {}, cellText(e.actor)),
            el("td", { class: "action" }, cellText(e.action)),
            el("td", {}, cellText(e.connection)),
            el("td", {}, cellText(e.stage)),
            el("td", { class: "details" }, details(e.details)),
          ),
        ),
      ),
    );
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}
