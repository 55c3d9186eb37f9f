"""Compile Fabric SQL into checked, parameterised SQL for one source dialect.

Fabric SQL is PostgreSQL-flavoured SQL with named parameters (`:name`). A compile is:

1. cheap checks on the text and its tokens, before the recursive parser sees it: empty,
   a NUL anywhere, not starting like a query, more than one statement, or beyond
   `QueryLimits` (length,
   tokens, nesting, postfix chains such as `x[1][2]`, CTEs, set-operation branches, CASE
   arms), so the parse and the steps after it do bounded work;
2. one parse (sqlglot, `postgres`), then a walk of the whole tree against an allow-list of
   node types, clauses and functions (anything not positively recognised is refused),
   and the size bounds of the target (`bounds`: type parameters in range, every
   construct that can multiply a value's size refused or bounded);
3. scope-by-scope resolution of every table to a selected entity and of every column to a
   selected column, each name bound where the target's own database would bind it
   (innermost query first, then outward; output aliases where that dialect reads them;
   against every column a table has, the hidden ones included, which refuse the query),
   rewriting as it goes: physical `"schema"."table" AS "alias"`, columns qualified by their
   source alias with the catalog's exact spelling, `*` expanded to the selected columns;
4. the row limit on the outermost query and the width of a row (`widths`: what one value
   can hold of the source's values, what the query adds to a row itself), then
   generation from the checked tree with
   sentinel placeholders that become the driver's `?` or `%s`, through the target's
   dialect rules (what it cannot express is refused, the rest rewritten).

The modules follow those steps: `reader` (1), `guard` and `bounds` (2), `scope` and
`names` (3), `rows`, `widths` and `generate` (4), `dialects` (the target rules),
`statement_compiler` (the pipeline).

Decisions (documented for the engine and the Studio):

- Schema-qualified (`sales.orders`) and cross-database (`db.sales.orders`) names are
  refused: apps use entity names, and a physical name would bypass the selection.
- VALUES lists, LATERAL, table functions, NATURAL joins and JOIN ... USING are refused.
  NATURAL would join on hidden columns too; USING merges columns in ways `*` expansion
  would have to imitate per dialect. Write JOIN ... ON.
- WITH RECURSIVE is refused: analytics queries rarely need it and it can run unbounded.
- LIMIT on the outermost query must be an integer literal (or ALL/absent): a parameter
  cannot be compared with max_rows at compile time. OFFSET may be a parameter.
- Row bound: `row_bound` is 1 when the outermost query reads one entity alone and its
  WHERE ANDs `column = parameter or literal` over the entity's whole primary key (from
  the catalog); otherwise `row_limit`. The engine runs small bounds without a worker
  thread; a stale key in the catalog costs speed there, never rows.
- Truncation: `row_limit` is max_rows + 1 unless the query's own literal LIMIT is not
  larger than max_rows. The engine reads at most `row_limit` rows; reading more than
  `max_rows` rows means the result was truncated (drop the extra row, flag truncated).
- A name binds as the target's database binds it (`names.NameRules` per dialect): a
  query whose binding is a hidden column is refused with the message a name no table has
  gets. Where databases disagree on which wins (an alias that is also a column, in
  clauses where the rules are murky or unverifiable) the name is refused, as is a
  subquery naming an enclosing query's alias; an output without an alias is named as
  PostgreSQL names it only where the name is certain. An entity whose hidden columns
  are not recorded (stored before they were) binds no name that might be one of them.
- Identifiers are all quoted in the output; unquoted input identifiers are folded first
  as PostgreSQL folds them, ASCII `A`-`Z` to lower case and no other letter (`fold_name`),
  so output column names are the same on every source. Unquoted names match catalog names
  ignoring ASCII case only (a non-ASCII letter must match exactly: the Kelvin sign is not
  `k`), quoted ones exactly. MySQL and SQL Server compare names by their collation, often
  ignoring case beyond ASCII; Fabric still matches the PostgreSQL way on every source,
  which never binds more than the source would, and sends the catalog's exact spelling
  quoted, so no source folds a name itself.
- A name the query writes (an output, table, subquery or CTE alias, a column alias list,
  a window name, a reference), quoted or not, longer than the target keeps
  (`connectors.registry`'s identifier limit, in the source's unit: PostgreSQL bytes,
  MySQL characters, SQL Server UTF-16 code units) is refused: PostgreSQL, and MariaDB for
  output names, would cut it silently and return a renamed column or collide two names;
  the others would fail the query. MySQL and MariaDB also refuse characters beyond U+FFFF
  in names, and so does the compiler for them.
- With ParamStyle.FORMAT every `%` in the text is written `%%`, so connectors must always
  pass a parameter sequence (possibly empty), never None, to the driver.
"""

from __future__ import annotations

from fabric.query.compiler.dialects import TARGET_DIALECTS
from fabric.query.compiler.reader import INPUT_DIALECT, QueryLimits
from fabric.query.compiler.statement import CompiledStatement
from fabric.query.compiler.statement_compiler import StatementCompiler

__all__ = [
    "INPUT_DIALECT",
    "TARGET_DIALECTS",
    "CompiledStatement",
    "QueryLimits",
    "StatementCompiler",
]
