"""The compiler's product: a checked statement in one target dialect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fabric.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """A checked statement in one target dialect, independent of parameter values."""

    sql: str
    """Target-dialect text with the driver's placeholders."""
    param_names: tuple[str, ...]
    """One name per placeholder, in text order (a name used twice appears twice)."""
    row_limit: int
    """The LIMIT on the outermost query: max_rows + 1, or the query's own smaller LIMIT."""
    row_bound: int
    """The most rows the source can return: `row_limit`, or 1 for a lookup by the whole
    primary key of the only table in FROM (see `rows.key_lookup`). A small bound lets the
    engine run the query without a worker thread."""
    max_rows: int
    """Rows the caller may receive; reading more than this many means truncated."""
    entities: tuple[str, ...]
    """Entity names the statement reads (sorted, unique)."""
    reads: tuple[tuple[str, tuple[str, ...]], ...]
    """The columns the statement reads, per entity (both sorted): what must stay selected
    for a running statement to go on (`fabric.query.revocation`)."""
    fingerprint: str
    """Stable hash of (dialect, sql), for cache keys and metrics labels."""

    @property
    def may_truncate(self) -> bool:
        """Whether the source can return more rows than the caller may receive."""
        return self.row_limit > self.max_rows

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Parameter values in placeholder order; InvalidArgument on a missing or extra name."""
        known = set(self.param_names)
        for name in self.param_names:
            if name not in params:
                raise InvalidArgument(f"missing parameter '{name}'")
        extra = sorted(name for name in params if name not in known)
        if extra:
            expected = ", ".join(sorted(known)) or "none"
            raise InvalidArgument(f"unknown parameter '{extra[0]}' (the query takes: {expected})")
        return tuple(params[name] for name in self.param_names)
