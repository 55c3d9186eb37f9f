// The key graph: one box per table (its name and primary key), one arrow per foreign key
// from the referencing table to the referenced one, all built as SVG elements.

import { svg } from "./dom.js";

const BOX_W = 190;
const LINE_H = 16;
const GAP_X = 70;
const GAP_Y = 40;

const qualified = (schema, name) => (schema ? `${schema}.${name}` : name);

export function keyGraph(tables) {
  const columns = Math.max(1, Math.ceil(Math.sqrt(tables.length)));
  const boxes = new Map();
  const heights = tables.map((t) => LINE_H * (2 + Math.max(1, (t.primary_key || []).length)));
  const rowHeight = [];
  tables.forEach((t, i) => {
    const row = Math.floor(i / columns);
    rowHeight[row] = Math.max(rowHeight[row] || 0, heights[i]);
  });
  const rowTop = [];
  rowHeight.reduce((top, h, row) => ((rowTop[row] = top), top + h + GAP_Y), 10);

  const root = svg("svg", {
    class: "keygraph",
    role: "img",
    "aria-label": "tables and their foreign keys",
    width: columns * (BOX_W + GAP_X) + 10,
    height: rowTop.length ? rowTop[rowTop.length - 1] + rowHeight[rowHeight.length - 1] + 10 : 20,
  });
  root.append(
    svg(
      "defs",
      {},
      svg(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }),
      ),
    ),
  );

  const nodes = svg("g", { class: "tables" });
  tables.forEach((t, i) => {
    const x = 10 + (i % columns) * (BOX_W + GAP_X);
    const y = rowTop[Math.floor(i / columns)];
    const key = qualified(t.schema, t.name);
    boxes.set(key, { x, y, h: heights[i] });
    const pk = t.primary_key || [];
    nodes.append(
      svg(
        "g",
        { class: "table-node", "data-table": key },
        svg("rect", { x, y, width: BOX_W, height: heights[i], rx: 4 }),
        svg("text", { x: x + 8, y: y + LINE_H, class: "table-name" }, key),
        pk.length
          ? svg("text", { x: x + 8, y: y + 2 * LINE_H, class: "pk" }, `PK (${pk.join(", ")})`)
          : svg("text", { x: x + 8, y: y + 2 * LINE_H, class: "muted" }, "no primary key"),
      ),
    );
  });

  const edges = svg("g", { class: "edges" });
  for (const t of tables) {
    const from = boxes.get(qualified(t.schema, t.name));
    for (const fk of t.foreign_keys || []) {
      const ref = fk.references || {};
      const to = boxes.get(qualified(ref.schema, ref.table));
      if (!from || !to) continue;
      const rightward = to.x >= from.x;
      const x1 = from.x + (rightward ? BOX_W : 0);
      const x2 = to.x + (rightward ? 0 : BOX_W);
      const y1 = from.y + from.h / 2;
      const y2 = to.y + to.h / 2;
      const label = `(${fk.columns.join(", ")}) → (${(ref.columns || []).join(", ")})`;
      const path =
        from === to
          ? `M ${from.x + BOX_W} ${y1 - 6} C ${from.x + BOX_W + 50} ${y1 - 40}, ${from.x + BOX_W + 50} ${y1 + 40}, ${from.x + BOX_W} ${y1 + 6}`
          : `M ${x1} ${y1} C ${(x1 + x2) / 2} ${y1}, ${(x1 + x2) / 2} ${y2}, ${x2} ${y2}`;
      edges.append(
        svg(
          "g",
          { class: "fk-edge", "data-from": qualified(t.schema, t.name), "data-to": qualified(ref.schema, ref.table) },
          svg("path", { d: path, "marker-end": "url(#arrow)" }),
          svg("title", {}, `${fk.name || "foreign key"} ${label}`),
        ),
      );
    }
  }
  root.append(edges, nodes);
  return root;
}
