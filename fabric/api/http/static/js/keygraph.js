// The key graph: one box per table (its name and primary key), one arrow per foreign key
// from the referencing table to the referenced one, all built as SVG elements. Tables are
// laid out in layers by key depth: a table that references nothing on the left, a table
// that references it to its right, so arrows point leftwards.

import { svg } from "./dom.js";

const BOX_W = 210;
const LINE_H = 16;
const GAP_X = 90;
const GAP_Y = 24;
const MAX_LABEL = 26;

const qualified = (schema, name) => (schema ? `${schema}.${name}` : name);
const shorten = (text) => (text.length > MAX_LABEL ? `${text.slice(0, MAX_LABEL - 1)}…` : text);

/** Each table's layer: 0 without foreign keys to the other tables, else one more than the
 *  deepest table it references (a cycle counts as no reference). */
function layers(tables, keyOf) {
  const byKey = new Map(tables.map((t) => [keyOf(t), t]));
  const depth = new Map();
  const visiting = new Set();
  const visit = (table) => {
    const key = keyOf(table);
    if (depth.has(key)) return depth.get(key);
    if (visiting.has(key)) return -1;
    visiting.add(key);
    let deepest = -1;
    for (const fk of table.foreign_keys || []) {
      const ref = fk.references || {};
      const target = byKey.get(qualified(ref.schema, ref.table));
      if (target && target !== table) deepest = Math.max(deepest, visit(target));
    }
    visiting.delete(key);
    depth.set(key, deepest + 1);
    return deepest + 1;
  };
  tables.forEach(visit);
  return depth;
}

export function keyGraph(tables) {
  const keyOf = (t) => qualified(t.schema, t.name);
  // One schema: boxes show bare table names (the full name is in each box's tooltip).
  const oneSchema = new Set(tables.map((t) => t.schema || "")).size <= 1;
  const depth = layers(tables, keyOf);
  const columns = [];
  for (const table of tables) {
    const layer = depth.get(keyOf(table));
    (columns[layer] ||= []).push(table);
  }

  const boxes = new Map();
  let width = 10;
  let height = 10;
  columns.forEach((column, layer) => {
    let y = 10;
    const x = 10 + layer * (BOX_W + GAP_X);
    for (const table of column) {
      const h = LINE_H * 2 + 10;
      boxes.set(keyOf(table), { x, y, h, table });
      y += h + GAP_Y;
    }
    width = Math.max(width, x + BOX_W + 10);
    height = Math.max(height, y);
  });

  const root = svg("svg", {
    class: "keygraph",
    role: "img",
    "aria-label": "tables and their foreign keys",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
  });
  root.append(
    svg(
      "defs",
      {},
      svg(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" },
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }),
      ),
    ),
  );

  const nodes = svg("g", { class: "tables" });
  for (const [key, { x, y, h, table }] of boxes) {
    const pk = table.primary_key || [];
    nodes.append(
      svg(
        "g",
        { class: "table-node", "data-table": key },
        svg("title", {}, key),
        svg("rect", { x, y, width: BOX_W, height: h, rx: 4 }),
        svg("text", { x: x + 8, y: y + LINE_H, class: "table-name" }, shorten(oneSchema ? table.name : key)),
        svg(
          "text",
          { x: x + 8, y: y + 2 * LINE_H, class: pk.length ? "pk" : "muted" },
          shorten(pk.length ? `PK (${pk.join(", ")})` : "no primary key"),
        ),
      ),
    );
  }

  const edges = svg("g", { class: "edges" });
  for (const [key, from] of boxes) {
    for (const fk of from.table.foreign_keys || []) {
      const ref = fk.references || {};
      const toKey = qualified(ref.schema, ref.table);
      const to = boxes.get(toKey);
      if (!to) continue;
      const y1 = from.y + from.h / 2;
      const y2 = to.y + to.h / 2;
      let path;
      if (to === from) {
        const x = from.x + BOX_W;
        path = `M ${x} ${y1 - 6} C ${x + 40} ${y1 - 30}, ${x + 40} ${y1 + 30}, ${x} ${y1 + 6}`;
      } else if (to.x === from.x - BOX_W - GAP_X) {
        // The next layer: straight across the gap.
        const x1 = from.x;
        const x2 = to.x + BOX_W;
        path = `M ${x1} ${y1} C ${(x1 + x2) / 2} ${y1}, ${(x1 + x2) / 2} ${y2}, ${x2} ${y2}`;
      } else if (to.x < from.x) {
        // Past the layers between: out of the source's bottom, along the gap under its
        // row, into the target's bottom, so the arrow runs between boxes rather than
        // behind them. (A cubic whose control points sit at one depth reaches 3/4 of it
        // at its middle.)
        const x1 = from.x + 16;
        const x2 = to.x + BOX_W - 16;
        const top1 = from.y + from.h;
        const top2 = to.y + to.h;
        const lane = Math.max(top1, top2) + GAP_Y / 2;
        const depth = lane + (lane - Math.min(top1, top2)) / 3;
        path = `M ${x1} ${top1} C ${x1} ${depth}, ${x2} ${depth}, ${x2} ${top2}`;
      } else {
        // Same layer (a cycle): around the right-hand side.
        const x = from.x + BOX_W;
        path = `M ${x} ${y1} C ${x + 60} ${y1}, ${x + 60} ${y2}, ${x} ${y2}`;
      }
      edges.append(
        svg(
          "g",
          { class: "fk-edge", "data-from": key, "data-to": toKey },
          svg("path", { d: path, "marker-end": "url(#arrow)" }),
          svg("title", {}, `${fk.name ? fk.name + ": " : ""}(${fk.columns.join(", ")}) → ${toKey} (${(ref.columns || []).join(", ")})`),
        ),
      );
    }
  }
  root.append(edges, nodes);
  return root;
}
