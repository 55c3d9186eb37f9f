// A result as a grid: the summary (rows, truncated, from cache, time), the columns with
// their types, and every value as text.

import { cellText, el } from "./dom.js";

export function summary(result, extra = []) {
  return el(
    "p",
    { class: "summary" },
    el("span", { class: "rows" }, `${result.row_count} rows`),
    " · ",
    el("span", { class: "truncated" }, result.truncated ? "truncated" : "complete"),
    " · ",
    el("span", { class: "cache" }, result.from_cache ? "from cache" : "from source"),
    " · ",
    el("span", { class: "elapsed" }, `${result.elapsed_ms} ms`),
    extra,
  );
}

export function grid(result) {
  const columns = result.columns || [];
  return el(
    "div",
    { class: "grid-scroll" },
    el(
      "table",
      { class: "grid" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          columns.map((c) => el("th", {}, el("span", { class: "col-name" }, c.name), el("small", { class: "col-type" }, c.type))),
        ),
      ),
      el(
        "tbody",
        {},
        (result.rows || []).map((row) =>
          el(
            "tr",
            {},
            row.map((value) => el("td", { class: value === null ? "null" : null }, cellText(value))),
          ),
        ),
      ),
    ),
  );
}
