"""The compile pipeline: read, guard, resolve, bound the rows, generate."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from sqlglot import exp
from sqlglot.errors import SqlglotError, UnsupportedError

from connectors.base import ParamStyle
from fabric.errors import InvalidArgument, QueryRejected
from fabric.model import CatalogSnapshot, fold_name
from fabric.query.compiler.bounds import check_sizes
from fabric.query.compiler.dialects import target_dialect
from fabric.query.compiler.generate import generate
from fabric.query.compiler.guard import (
    check_dialect_functions,
    check_name_lengths,
    check_structure,
)
from fabric.query.compiler.param_types import parameter_types
from fabric.query.compiler.reader import (
    QueryLimits,
    QueryReader,
    without_literals,
)
from fabric.query.compiler.rows import apply_row_limit, key_lookup
from fabric.query.compiler.scope import ScopeResolver
from fabric.query.compiler.statement import CompiledStatement
from fabric.query.compiler.widths import row_width


class StatementCompiler:
    """Turns Fabric SQL into a CompiledStatement, or raises QueryRejected saying why not.

    Stateless after construction, so one instance may serve every thread.
    """

    def __init__(
        self,
        limits: QueryLimits | None = None,
        *,
        max_sql_length: int | None = None,
        max_nesting_depth: int | None = None,
    ) -> None:
        limits = limits or QueryLimits()
        if max_sql_length is not None:
            limits = replace(limits, max_length=max_sql_length)
        if max_nesting_depth is not None:
            limits = replace(limits, max_depth=max_nesting_depth)
        self.limits = limits
        self._reader = QueryReader(limits)

    def check_length(self, sql: str) -> None:
        """Refuse an over-long text at once, before any other work on it."""
        self._reader.check_length(sql)

    def compile(
        self,
        sql: str,
        catalog: CatalogSnapshot,
        *,
        dialect: str,
        param_style: ParamStyle,
        max_rows: int,
    ) -> CompiledStatement:
        target = target_dialect(dialect)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise InvalidArgument("max_rows must be a positive integer")
        tokens = self._reader.tokenize(sql)
        try:
            tree = self._reader.parse(sql, tokens)
            check_structure(tree, catalog)
            check_dialect_functions(tree, dialect)
            check_sizes(tree, dialect, self.limits.max_type_length)
            fold_unquoted_names(tree)
            check_name_lengths(tree, dialect)
            resolver = ScopeResolver(catalog, target.NAMES, dialect=dialect, source_text=sql)
            resolver.resolve(tree)
            types = parameter_types(tree, resolver.column_types)
            row_limit = apply_row_limit(tree, max_rows)
            row_bound = min(row_limit, 1) if key_lookup(tree, resolver.root_sources) else row_limit
            width = row_width(tree)
            if width.size > self.limits.max_row_bytes:
                raise QueryRejected(
                    f"one row would carry up to {width.size} bytes the query adds itself "
                    "(padded types, literals, cut aggregates, and their copies through "
                    f"nested subqueries); at most {self.limits.max_row_bytes}"
                )
            for identifier in tree.find_all(exp.Identifier):
                identifier.set("quoted", True)
            # The target refuses what it cannot express and rewrites the rest as it generates.
            text, names = generate(tree, target, param_style, sql)
        except RecursionError:
            raise QueryRejected(
                f"query is nested too deeply (the limit is {self.limits.max_depth} levels)"
            ) from None
        except UnsupportedError as error:
            raise QueryRejected(
                f"the query uses a construct {dialect} does not support: "
                f"{without_literals(str(error))}"
            ) from None
        except SqlglotError:
            # sqlglot's own messages may quote query text; say less rather than echo it.
            raise QueryRejected("the query could not be checked (unsupported construct)") from None
        fingerprint = hashlib.blake2b(f"{dialect}\x00{text}".encode(), digest_size=16).hexdigest()
        return CompiledStatement(
            sql=text,
            param_names=names,
            row_limit=row_limit,
            row_bound=row_bound,
            max_rows=max_rows,
            entities=tuple(sorted(resolver.entities)),
            reads=tuple(
                (entity, tuple(sorted(columns)))
                for entity, columns in sorted(resolver.reads.items())
            ),
            fingerprint=fingerprint,
            row_parts=width.parts,
            row_size=width.size,
            row_params=width.params,
            max_row_bytes=self.limits.max_row_bytes,
            param_types=types,
        )


def fold_unquoted_names(tree: exp.Expr) -> None:
    """Fold every unquoted name as PostgreSQL does (`fold_name`: ASCII letters only);
    quoted names stay as written. Every source then sees the names quoted, so none
    folds them again its own way."""
    for identifier in tree.find_all(exp.Identifier):
        if not identifier.args.get("quoted"):
            identifier.set("this", fold_name(identifier.this))
