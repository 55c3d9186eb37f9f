// Connections per stage: list, create and edit from the kind's declared settings, test, and
// delete after a confirmation that says what will be purged, then the purge counts.

import { del, get, patch, post, seg } from "./api.js";
import { byId, el, facts, fill } from "./dom.js";
import { stageBlock, readStages } from "./settings-form.js";
import { isAdmin, setConnections, setIdentity } from "./store.js";
import { notify } from "./notice.js";

let kinds = [];
let started = false;

export function start(me) {
  setIdentity(me);
  if (!started) {
    started = true;
    byId("conn-new").addEventListener("click", () => openEditor(null));
    byId("conn-reload").addEventListener("click", () => load());
  }
  kinds = [];
  byId("conn-editor").hidden = true;
  byId("conn-dialog").hidden = true;
  load();
}

export function shown() {}

// Loads can overlap (sign-in, then a change): only the latest one's answer is shown.
let loads = 0;

export async function load() {
  const mine = ++loads;
  try {
    const data = await get("/connections");
    if (mine !== loads) return;
    setConnections(data.connections);
    render(data.connections);
  } catch (error) {
    fill(byId("conn-list"), el("p", { class: "error" }, error.message));
  }
}

async function kindList() {
  if (!kinds.length) kinds = await get("/kinds");
  return kinds;
}

function stageRows(connection) {
  return connection.stages.map((stage) =>
    el(
      "tr",
      { class: "stage-row" },
      el("td", { class: "stage" }, stage.stage === "*" ? "* (all stages)" : stage.stage),
      el(
        "td",
        {},
        el(
          "ul",
          { class: "settings" },
          Object.entries(stage.settings || {}).map(([key, value]) =>
            el("li", {}, el("span", { class: "key" }, key), " = ", el("span", { class: "value" }, String(value))),
          ),
        ),
      ),
      el("td", { class: "password" }, stage.has_password ? "set" : "not set"),
    ),
  );
}

function render(list) {
  const container = byId("conn-list");
  if (!list.length) {
    fill(container, el("p", { class: "empty" }, "No connections yet."));
    return;
  }
  fill(
    container,
    list.map((connection) => {
      const result = el("div", { class: "test-result" });
      const actions = isAdmin()
        ? [
            el("button", { type: "button", class: "conn-test", onclick: () => test(connection, result) }, "Test"),
            el("button", { type: "button", class: "conn-edit", onclick: () => openEditor(connection) }, "Edit"),
            el("button", { type: "button", class: "conn-delete danger", onclick: () => confirmDelete(connection) }, "Delete"),
          ]
        : [];
      return el(
        "article",
        { class: "connection card", dataset: { name: connection.name } },
        el(
          "header",
          {},
          el("h3", { class: "conn-name" }, connection.name),
          el("span", { class: "badge" }, connection.kind),
          el("span", { class: "muted" }, `version ${connection.version}`),
          el("span", { class: "actions" }, actions),
        ),
        el(
          "table",
          { class: "stages" },
          el("thead", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "settings"), el("th", {}, "password"))),
          el("tbody", {}, stageRows(connection)),
        ),
        result,
      );
    }),
  );
}

async function test(connection, target) {
  fill(target, el("span", { class: "muted" }, "Testing…"));
  try {
    const data = await post(`/connections/${seg(connection.name)}/test`, {});
    fill(
      target,
      el(
        "ul",
        {},
        data.results.map((r) =>
          el(
            "li",
            { class: r.ok ? "ok" : "error" },
            `${r.stage}: ${r.ok ? "OK" : "failed"}`,
            r.message ? ` (${r.message})` : "",
            r.elapsed_ms !== undefined ? ` · ${r.elapsed_ms} ms` : "",
          ),
        ),
      ),
    );
  } catch (error) {
    fill(target, el("p", { class: "error" }, error.message));
  }
}

async function openEditor(connection) {
  const editor = byId("conn-editor");
  editor.hidden = false;
  byId("conn-dialog").hidden = true;
  let available;
  try {
    available = await kindList();
  } catch (error) {
    fill(editor, el("p", { class: "error" }, error.message));
    return;
  }
  const stages = el("div", { class: "stages-form" });
  const message = el("p", { class: "error", role: "alert", hidden: true });
  const nameInput = el("input", { id: "conn-form-name", type: "text", required: true, autocomplete: "off" });
  const kindSelect = el(
    "select",
    { id: "conn-form-kind" },
    available.map((k) => el("option", { value: k.kind }, `${k.kind} (${k.dialect})`)),
  );
  const verify = el("input", { id: "conn-form-verify", type: "checkbox", checked: true });
  const kindOf = () => available.find((k) => k.kind === kindSelect.value);
  const resetStages = () => fill(stages, stageBlock(kindOf()));

  if (connection) {
    nameInput.value = connection.name;
    nameInput.readOnly = true;
    kindSelect.value = connection.kind;
    kindSelect.disabled = true;
    fill(stages, connection.stages.map((s) => stageBlock(kindOf(), s, { fixedStage: true, removable: true })));
  } else {
    kindSelect.addEventListener("change", resetStages);
    resetStages();
  }

  const form = el(
    "form",
    { id: "conn-form" },
    el("h3", {}, connection ? `Edit ${connection.name}` : "New connection"),
    el("div", { class: "field" }, el("label", { for: "conn-form-name" }, "name"), nameInput),
    el("div", { class: "field" }, el("label", { for: "conn-form-kind" }, "kind"), kindSelect),
    stages,
    el(
      "button",
      { type: "button", class: "link", onclick: () => stages.append(stageBlock(kindOf(), { stage: "" }, { removable: true })) },
      "Add a stage",
    ),
    el("div", { class: "field inline" }, verify, el("label", { for: "conn-form-verify" }, "connect first (change nothing if it fails)")),
    el(
      "div",
      { class: "bar" },
      el("button", { type: "submit", class: "primary", id: "conn-form-save" }, connection ? "Save" : "Create"),
      el("button", { type: "button", onclick: () => (editor.hidden = true) }, "Cancel"),
    ),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.hidden = true;
    try {
      if (connection) {
        const kept = readStages(stages);
        // A stage whose block was removed from the form is removed, with its password.
        const removed = connection.stages.map((s) => s.stage).filter((name) => !kept.some((k) => k.stage === name));
        await patch(`/connections/${seg(connection.name)}`, {
          expected_version: connection.version,
          stages: kept,
          remove_stages: removed,
          verify: verify.checked,
        });
      } else {
        await post("/connections", {
          name: nameInput.value.trim(),
          kind: kindSelect.value,
          stages: readStages(stages),
          verify: verify.checked,
        });
      }
      editor.hidden = true;
      fill(editor);
      notify(connection ? `Saved ${connection.name}.` : `Created ${nameInput.value.trim()}.`);
      await load();
    } catch (error) {
      message.hidden = false;
      message.textContent = error.message;
    }
  });
  fill(editor, form);
  if (!connection) nameInput.focus();
}

async function confirmDelete(connection) {
  const dialog = byId("conn-dialog");
  byId("conn-editor").hidden = true;
  dialog.hidden = false;
  fill(dialog, el("p", { class: "muted" }, "Looking up what a deletion would purge…"));
  let plan;
  try {
    plan = await get(`/connections/${seg(connection.name)}/deletion`);
  } catch (error) {
    fill(dialog, el("p", { class: "error" }, error.message));
    return;
  }
  fill(
    dialog,
    el("h3", {}, `Delete ${connection.name}?`),
    el("p", {}, "This removes the connection, its password and its selection, and purges:"),
    facts(plan, "facts purge-plan"),
    el(
      "div",
      { class: "bar" },
      el("button", { type: "button", id: "conn-delete-confirm", class: "danger", onclick: () => remove(connection) }, "Delete"),
      el("button", { type: "button", onclick: () => (dialog.hidden = true) }, "Cancel"),
    ),
  );
}

async function remove(connection) {
  const dialog = byId("conn-dialog");
  try {
    const counts = await del(`/connections/${seg(connection.name)}`);
    fill(
      dialog,
      el("h3", { id: "conn-deleted" }, `Deleted ${connection.name}`),
      el("p", {}, "Purged:"),
      facts(counts, "facts purge-counts"),
      el("button", { type: "button", onclick: () => (dialog.hidden = true) }, "Close"),
    );
    await load();
  } catch (error) {
    fill(dialog, el("p", { class: "error" }, error.message));
  }
}
