// Where a compile error points: a 1-based line and column turned into offsets in the text.

/** The [start, end) offsets of the place a line/column names: from the column to the end of
 *  the word there (at least one character), clamped to the text. */
export function spanAt(text, line, column) {
  const lines = text.split("\n");
  const row = Math.min(Math.max(line, 1), lines.length) - 1;
  let start = 0;
  for (let i = 0; i < row; i += 1) start += lines[i].length + 1;
  const col = Math.min(Math.max(column, 1) - 1, lines[row].length);
  start += col;
  let end = start;
  while (end < text.length && /[\w$."]/.test(text[end])) end += 1;
  if (end === start) end = Math.min(start + 1, text.length);
  return [start, end];
}

/** The line the error is on, and a caret under the column, as two lines of text. */
export function caretLines(text, line, column) {
  const lines = text.split("\n");
  const row = Math.min(Math.max(line, 1), lines.length) - 1;
  const source = lines[row];
  const col = Math.min(Math.max(column, 1) - 1, source.length);
  return [source, `${" ".repeat(col)}^`];
}
