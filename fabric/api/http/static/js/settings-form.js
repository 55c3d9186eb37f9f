// A connection form generated from a kind's declared settings (`GET /api/v1/kinds`). The
// secret setting (the password) is a write-only field: it is never filled from the API, and
// an existing one shows as "set".

import { el } from "./dom.js";

const ALL_STAGES = "*";

function settingInput(setting, value) {
  const id = `set-${setting.name}-${Math.random().toString(36).slice(2, 8)}`;
  let input;
  if (setting.type === "boolean") {
    input = el(
      "select",
      { id, name: setting.name },
      el("option", { value: "" }, setting.default === null || setting.default === undefined ? "(unset)" : `(default: ${setting.default})`),
      el("option", { value: "true" }, "true"),
      el("option", { value: "false" }, "false"),
    );
    if (value !== undefined && value !== null) input.value = String(value);
  } else {
    input = el("input", {
      id,
      name: setting.name,
      type: setting.type === "integer" || setting.type === "number" ? "number" : "text",
      step: setting.type === "number" ? "any" : null,
      placeholder: setting.default === null || setting.default === undefined ? "" : String(setting.default),
      autocomplete: "off",
    });
    if (value !== undefined && value !== null) input.value = String(value);
  }
  input.dataset.type = setting.type;
  return el(
    "div",
    { class: "field" },
    el("label", { for: id }, setting.name, setting.required ? " *" : ""),
    input,
    setting.help ? el("small", {}, setting.help) : null,
  );
}

function passwordInput(setting, hasPassword) {
  const id = `pw-${Math.random().toString(36).slice(2, 8)}`;
  return el(
    "div",
    { class: "field" },
    el("label", { for: id }, setting.name),
    el("input", {
      id,
      name: setting.name,
      type: "password",
      class: "secret",
      autocomplete: "new-password",
      placeholder: hasPassword ? "set (leave empty to keep)" : "",
    }),
    el("small", {}, hasPassword ? "set · write-only" : "write-only: never shown again"),
  );
}

/** One stage's block: its name and a field per declared setting. */
export function stageBlock(kind, stage = {}, { removable = false, fixedStage = false } = {}) {
  const values = stage.settings || {};
  const stageInput = el("input", {
    type: "text",
    class: "stage-name",
    value: stage.stage || ALL_STAGES,
    readOnly: fixedStage,
    title: "* = every stage without settings of its own",
  });
  const block = el(
    "fieldset",
    { class: "stage" },
    el("legend", {}, "Stage"),
    el("div", { class: "field" }, el("label", {}, "stage"), stageInput),
    kind.settings.map((setting) =>
      setting.secret ? passwordInput(setting, stage.has_password) : settingInput(setting, values[setting.name]),
    ),
  );
  if (removable) {
    block.append(el("button", { type: "button", class: "link", onclick: () => block.remove() }, "Remove stage"));
  }
  return block;
}

function typed(input) {
  const raw = input.value;
  if (raw === "") return undefined;
  switch (input.dataset.type) {
    case "integer":
    case "number":
      return Number(raw);
    case "boolean":
      return raw === "true";
    default:
      return raw;
  }
}

/** The stages as the API takes them: `[{stage, settings, password?}]`; an empty password is left out. */
export function readStages(container) {
  return [...container.querySelectorAll("fieldset.stage")].map((block) => {
    const stage = { stage: block.querySelector(".stage-name").value.trim() || ALL_STAGES, settings: {} };
    for (const input of block.querySelectorAll("input[name], select[name]")) {
      if (input.classList.contains("secret")) {
        if (input.value) stage.password = input.value;
        continue;
      }
      const value = typed(input);
      if (value !== undefined) stage.settings[input.name] = value;
    }
    return stage;
  });
}
