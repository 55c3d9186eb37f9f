// The SQL editor: a statement with named parameters, run as a paged statement; errors show
// their message and, for a compile error, select the place in the text; the grid pages
// forward through the statement endpoints and back through the pages already fetched.

import { ApiError, del, post, seg } from "./api.js";
import { byId, el, fill } from "./dom.js";
import { grid, summary } from "./grid.js";
import { caretLines, spanAt } from "./position.js";
import { fillConnectionSelect, onConnections } from "./store.js";

let started = false;
// The statement being paged: its id, the pages kept (the latest MAX_KEPT_PAGES, to page
// back through without asking the gateway again), the one on screen, and how many pages
// and rows were dropped from the front of the kept ones.
let statement = null;
const MAX_KEPT_PAGES = 20;

export function start() {
  if (started) return;
  started = true;
  onConnections((list) => fillConnectionSelect(byId("sql-connection"), list));
  byId("sql-param-add").addEventListener("click", () => addParam("", ""));
  byId("sql-run").addEventListener("click", run);
  byId("sql-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    }
  });
  byId("sql-text").addEventListener("input", () => byId("sql-text").classList.remove("has-error"));
}

export function shown() {}

// `auto` reads the value as the CLI does; the typed ones travel as {"date": "2024-01-01"}.
const TYPED = ["decimal", "date", "time", "timestamp", "bytes"];
const PARAM_TYPES = ["auto", "text", "number", "boolean", "null", ...TYPED];

function addParam(name, value) {
  const row = el(
    "div",
    { class: "param" },
    el("input", { type: "text", class: "param-name", placeholder: "name", value: name }),
    el("input", { type: "text", class: "param-value", placeholder: "value", value: value }),
    el(
      "select",
      { class: "param-type" },
      PARAM_TYPES.map((t) => el("option", { value: t }, t)),
    ),
  );
  row.append(el("button", { type: "button", class: "link", onclick: () => row.remove() }, "remove"));
  byId("sql-params").append(row);
  return row;
}

// As the CLI reads `-p NAME=VALUE`: a number, boolean or null only when it reads back
// exactly as typed (`5`, `2.5`; `007`, `1.50` stay text).
function autoValue(raw) {
  if (raw === "true") return true;
  if (raw === "false") return false;
  if (raw === "null") return null;
  if (/^-?(0|[1-9]\d*)(\.\d*[1-9])?$/.test(raw) && String(Number(raw)) === raw) return Number(raw);
  return raw;
}

function readParams() {
  const params = {};
  for (const row of byId("sql-params").querySelectorAll(".param")) {
    const name = row.querySelector(".param-name").value.trim();
    if (!name) continue;
    const raw = row.querySelector(".param-value").value;
    const type = row.querySelector(".param-type").value;
    if (type === "text") params[name] = raw;
    else if (type === "number") params[name] = Number(raw);
    else if (type === "boolean") params[name] = raw === "true";
    else if (type === "null") params[name] = null;
    else if (TYPED.includes(type)) params[name] = { [type]: raw };
    else params[name] = autoValue(raw);
  }
  return params;
}

function showError(error, sql) {
  const box = byId("sql-error");
  box.hidden = false;
  const parts = [el("p", { class: "error-message" }, error.message)];
  if (error.position && error.position.line) {
    const { line, column } = error.position;
    const [source, caret] = caretLines(sql, line, column);
    parts.push(
      el("p", { class: "error-position" }, `line ${line}, column ${column}`),
      el("pre", { class: "error-caret" }, `${source}\n${caret}`),
    );
    const editor = byId("sql-text");
    const [start, end] = spanAt(sql, line, column);
    editor.classList.add("has-error");
    editor.focus();
    editor.setSelectionRange(start, end);
  }
  fill(box, parts);
}

async function closeStatement() {
  if (statement && !statement.done) {
    const id = statement.id;
    statement = null;
    try {
      await del(`/statements/${seg(id)}`);
    } catch {
      // Already gone (finished or expired): nothing left to close.
    }
  }
  statement = null;
}

async function run() {
  const sql = byId("sql-text").value;
  byId("sql-error").hidden = true;
  byId("sql-text").classList.remove("has-error");
  await closeStatement();
  const pageSize = Math.max(1, Number(byId("sql-page-size").value) || 100);
  fill(byId("sql-result"), el("p", { class: "muted" }, "Running…"));
  try {
    const page = await post("/statements", {
      connection: byId("sql-connection").value,
      sql,
      params: readParams(),
      page_size: pageSize,
    });
    statement = {
      id: page.statement_id,
      pageSize,
      pages: [page],
      index: 0,
      done: Boolean(page.done),
      fetching: false,
      droppedPages: 0,
      droppedRows: 0,
    };
    render();
  } catch (error) {
    fill(byId("sql-result"));
    showError(error instanceof ApiError ? error : new ApiError(0, "error", String(error)), sql);
  }
}

async function next() {
  if (!statement) return;
  if (statement.index + 1 < statement.pages.length) {
    statement.index += 1;
    render();
    return;
  }
  if (statement.done || statement.fetching) return;
  const current = statement;
  current.fetching = true;
  render();
  try {
    const page = await post(`/statements/${seg(current.id)}/next`, { page_size: current.pageSize });
    current.pages.push(page);
    current.index += 1;
    current.done = Boolean(page.done);
    if (current.pages.length > MAX_KEPT_PAGES) {
      const dropped = current.pages.shift();
      current.index -= 1;
      current.droppedPages += 1;
      current.droppedRows += dropped.rows.length;
    }
  } catch (error) {
    showError(error, byId("sql-text").value);
  } finally {
    current.fetching = false;
    if (statement === current) render();
  }
}

function previous() {
  if (!statement || statement.index === 0) return;
  statement.index -= 1;
  render();
}

function render() {
  const { pages, index, done, fetching, droppedPages, droppedRows } = statement;
  const page = pages[index];
  const first = droppedRows + pages.slice(0, index).reduce((n, p) => n + p.rows.length, 0);
  const seen = droppedRows + pages.reduce((n, p) => n + p.rows.length, 0);
  const hasNext = !fetching && (index + 1 < pages.length || !done);
  fill(
    byId("sql-result"),
    summary(page),
    el(
      "div",
      { class: "pager" },
      el("button", { type: "button", id: "sql-prev", disabled: index === 0, onclick: previous }, "Previous page"),
      el(
        "span",
        { class: "page-info" },
        `page ${droppedPages + index + 1} · rows ${page.rows.length ? first + 1 : first}–${first + page.rows.length}`,
        done ? ` of ${seen}` : ` of ${seen}+`,
      ),
      el("button", { type: "button", id: "sql-next", disabled: !hasNext, onclick: next }, "Next page"),
    ),
    grid(page),
  );
}
