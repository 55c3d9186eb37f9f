// Discovery: the source's tables with columns, types, primary and foreign keys (composite
// keys whole) and a key graph; selection with a checkbox per column and an entity name;
// the selected entities with preview and unselect; refresh with its drift report.

import { del, get, post, seg } from "./api.js";
import { byId, el, fill } from "./dom.js";
import { grid, summary } from "./grid.js";
import { keyGraph } from "./keygraph.js";
import { fillConnectionSelect, onConnections } from "./store.js";
import { notify } from "./notice.js";

let started = false;
let entities = [];

const columnName = (c) => (typeof c === "string" ? c : c.name);
const tableOf = (entity) => entity.table || { schema: entity.schema, name: entity.table_name };

export function start() {
  if (started) return;
  started = true;
  const select = byId("disc-connection");
  onConnections((list) => fillConnectionSelect(select, list));
  select.addEventListener("change", () => {
    fill(byId("disc-tables"));
    fill(byId("disc-graph"));
    byId("disc-drift").hidden = true;
    loadEntities();
  });
  byId("disc-run").addEventListener("click", discover);
  byId("disc-refresh").addEventListener("click", refresh);
}

export function shown() {
  loadEntities();
}

const connection = () => byId("disc-connection").value;

async function loadEntities() {
  const target = byId("disc-entities");
  if (!connection()) {
    fill(target, el("p", { class: "empty" }, "No connection to look at."));
    return;
  }
  try {
    const data = await get(`/connections/${seg(connection())}/entities`);
    entities = data.entities;
    renderEntities();
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

function selectedColumns(entity) {
  return (entity.selected_columns || entity.columns || []).map(columnName);
}

function renderEntities() {
  const target = byId("disc-entities");
  if (!entities.length) {
    fill(target, el("p", { class: "empty" }, "Nothing selected yet."));
    return;
  }
  const preview = el("div", { id: "disc-preview" });
  fill(
    target,
    el(
      "table",
      { class: "entities" },
      el("thead", {}, el("tr", {}, el("th", {}, "entity"), el("th", {}, "table"), el("th", {}, "columns"), el("th", {}, ""))),
      el(
        "tbody",
        {},
        entities.map((entity) => {
          const table = tableOf(entity);
          return el(
            "tr",
            { class: "entity", dataset: { entity: entity.name } },
            el("td", { class: "entity-name" }, entity.name),
            el("td", {}, `${table.schema ? table.schema + "." : ""}${table.name}`),
            el("td", { class: "entity-columns" }, selectedColumns(entity).join(", ")),
            el(
              "td",
              { class: "actions" },
              el("button", { type: "button", class: "entity-preview", onclick: () => showPreview(entity, preview) }, "Preview"),
              el("button", { type: "button", class: "entity-unselect", onclick: () => unselect(entity) }, "Unselect"),
            ),
          );
        }),
      ),
    ),
    preview,
  );
}

async function showPreview(entity, target) {
  fill(target, el("p", { class: "muted" }, `Previewing ${entity.name}…`));
  try {
    const result = await post(`/connections/${seg(connection())}/entities/${seg(entity.name)}/preview`, { limit: 100 });
    fill(target, el("h3", {}, "Preview of ", el("span", { class: "entity-name" }, entity.name)), summary(result), grid(result));
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

async function unselect(entity) {
  try {
    await del(`/connections/${seg(connection())}/entities/${seg(entity.name)}`);
    notify(`Unselected ${entity.name}.`);
    await loadEntities();
  } catch (error) {
    notify(error.message);
  }
}

async function discover() {
  const target = byId("disc-tables");
  fill(target, el("p", { class: "muted" }, "Discovering…"));
  const schema = byId("disc-schema").value.trim();
  try {
    const data = await post(`/connections/${seg(connection())}/discover`, schema ? { schemas: [schema] } : {});
    await loadEntities();
    fill(target, data.tables.map(tableCard));
    fill(byId("disc-graph"), keyGraph(data.tables));
    if (!data.tables.length) fill(target, el("p", { class: "empty" }, "The source has no tables here."));
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

function tableCard(table) {
  const full = `${table.schema ? table.schema + "." : ""}${table.name}`;
  const existing = entities.find((e) => {
    const t = tableOf(e);
    return t.name === table.name && (t.schema || "") === (table.schema || "");
  });
  const chosen = new Set(existing ? selectedColumns(existing) : []);
  const pk = new Set(table.primary_key || []);
  const fkColumns = new Map();
  for (const fk of table.foreign_keys || []) {
    for (const c of fk.columns) fkColumns.set(c, fk);
  }
  const entityInput = el("input", { type: "text", class: "entity-input", value: existing ? existing.name : table.name });
  const message = el("p", { class: "select-result", role: "status" });
  // A table not selected yet offers every column; a selected one shows its selection.
  const boxes = table.columns.map((c) =>
    el("input", {
      type: "checkbox",
      class: "column-check",
      value: c.name,
      checked: existing ? chosen.has(c.name) : true,
    }),
  );
  const card = el(
    "article",
    { class: "table card", dataset: { table: full } },
    el("header", {}, el("h3", { class: "table-name" }, full), existing ? el("span", { class: "badge" }, `selected as ${existing.name}`) : null),
    el(
      "table",
      { class: "columns" },
      el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "column"), el("th", {}, "type"), el("th", {}, "null"), el("th", {}, "keys"))),
      el(
        "tbody",
        {},
        table.columns.map((c, i) =>
          el(
            "tr",
            { dataset: { column: c.name } },
            el("td", {}, boxes[i]),
            el("td", { class: "col-name" }, c.name),
            el("td", { class: "col-type" }, c.type),
            el("td", {}, c.nullable ? "yes" : "no"),
            el(
              "td",
              {},
              pk.has(c.name) ? el("span", { class: "badge pk" }, "PK") : null,
              fkColumns.has(c.name) ? el("span", { class: "badge fk" }, "FK") : null,
            ),
          ),
        ),
      ),
    ),
    el(
      "ul",
      { class: "keys" },
      pk.size ? el("li", { class: "pk-line" }, `primary key (${table.primary_key.join(", ")})`) : el("li", { class: "muted" }, "no primary key"),
      (table.foreign_keys || []).map((fk) => {
        const ref = fk.references || {};
        return el(
          "li",
          { class: "fk-line" },
          `${fk.name ? fk.name + ": " : ""}foreign key (${fk.columns.join(", ")}) → ${ref.schema ? ref.schema + "." : ""}${ref.table} (${(ref.columns || []).join(", ")})`,
        );
      }),
    ),
    el(
      "div",
      { class: "bar" },
      el("label", {}, "entity ", entityInput),
      el(
        "button",
        {
          type: "button",
          class: "select-button",
          onclick: async () => {
            const columns = boxes.filter((b) => b.checked).map((b) => b.value);
            try {
              await post(`/connections/${seg(connection())}/entities`, {
                entity: entityInput.value.trim(),
                schema: table.schema,
                table: table.name,
                columns,
              });
              message.className = "select-result ok";
              message.textContent = `Selected ${entityInput.value.trim()}.`;
              await loadEntities();
            } catch (error) {
              message.className = "select-result error";
              message.textContent = error.message;
            }
          },
        },
        "Select",
      ),
    ),
    message,
  );
  return card;
}

async function refresh() {
  const target = byId("disc-drift");
  target.hidden = false;
  fill(target, el("p", { class: "muted" }, "Refreshing…"));
  try {
    const report = await post(`/connections/${seg(connection())}/refresh`, {});
    const drift = report.drift || [];
    fill(
      target,
      el("h3", {}, "Drift report"),
      el("p", {}, `catalog version ${report.previous_catalog_version ?? "?"} → ${report.catalog_version ?? "?"}`),
      drift.length
        ? el(
            "table",
            { class: "drift" },
            el("thead", {}, el("tr", {}, ["kind", "entity", "table", "column", "change", "detail"].map((h) => el("th", {}, h)))),
            el(
              "tbody",
              {},
              drift.map((d) =>
                el(
                  "tr",
                  {},
                  el("td", {}, d.kind),
                  el("td", {}, d.entity || ""),
                  el("td", {}, `${d.schema ? d.schema + "." : ""}${d.table || ""}`),
                  el("td", {}, d.column || ""),
                  el("td", {}, d.old_type || d.new_type ? `${d.old_type || "—"} → ${d.new_type || "—"}` : ""),
                  el("td", {}, d.detail || ""),
                ),
              ),
            ),
          )
        : el("p", { class: "ok" }, "No drift: the selection matches the source."),
    );
    await loadEntities();
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}
