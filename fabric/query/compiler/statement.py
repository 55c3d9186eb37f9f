"""The compiler's product: a checked statement in one target dialect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fabric.errors import InvalidArgument
from fabric.query.compiler.param_types import ParameterTypes
from fabric.query.compiler.widths import VALUE_BYTES


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
    row_parts: int = 0
    """Values read from the source one row holds at most (`widths.row_width`)."""
    row_size: int = 0
    """Bytes the query adds to one row at most (literals, padding), parameters apart."""
    row_params: tuple[tuple[str, int], ...] = ()
    """How many times each parameter's value appears in one row at most."""
    max_row_bytes: int | None = None
    """The most bytes the query may add to one row, parameters included (`bind` checks
    them); None: no limit."""
    param_types: ParameterTypes = ()
    """Each distinct parameter with the Arrow type its place in the query implies (None:
    unknown), in order of first appearance (`param_types.parameter_types`)."""

    @property
    def may_truncate(self) -> bool:
        """Whether the source can return more rows than the caller may receive."""
        return self.row_limit > self.max_rows

    def batch_rows(self, args: tuple[Any, ...], batch_bytes: int, most: int) -> int:
        """Rows per batch to read the source in, at most `most`: as many as keep the
        widest row this query can make, with `args` bound, within `batch_bytes` (a value
        read from the source counted as VALUE_BYTES)."""
        width = self._added_bytes(args)[0] + self.row_parts * VALUE_BYTES
        return max(1, min(most, batch_bytes // max(1, width)))

    def _added_bytes(self, args: tuple[Any, ...]) -> tuple[int, str | None]:
        """Bytes the query adds to one row with `args` bound, and the parameter that
        adds the most (None when none adds any)."""
        values = dict(zip(self.param_names, args, strict=True))
        total, heaviest, most = self.row_size, None, 0
        for name, times in self.row_params:
            added = _value_bytes(values.get(name)) * times
            total += added
            if added > most:
                heaviest, most = name, added
        return total, heaviest

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Parameter values in placeholder order; InvalidArgument on a missing or extra
        name, or on a text value holding a NUL (`check_text_parameters`)."""
        check_text_parameters(params)
        known = set(self.param_names)
        for name in self.param_names:
            if name not in params:
                raise InvalidArgument(f"missing parameter '{name}'")
        extra = sorted(name for name in params if name not in known)
        if extra:
            expected = ", ".join(sorted(known)) or "none"
            raise InvalidArgument(f"unknown parameter '{extra[0]}' (the query takes: {expected})")
        args = tuple(params[name] for name in self.param_names)
        if self.max_row_bytes is not None:
            added, heaviest = self._added_bytes(args)
            if added > self.max_row_bytes:
                raise InvalidArgument(
                    f"with these parameter values one row would carry up to {added} bytes "
                    f"the query adds itself (most of them from parameter '{heaviest}'); "
                    f"at most {self.max_row_bytes}: send shorter values"
                )
        return args


def check_text_parameters(params: Mapping[str, Any]) -> None:
    """InvalidArgument naming the first text parameter whose value holds a NUL (U+0000).

    PostgreSQL cannot hold a NUL in text at all, and the others would keep a value the
    same query on PostgreSQL cannot see: refused on every source alike, before anything
    is sent. The message names the parameter, never its value; binary data goes as
    bytes, where a zero byte is an ordinary byte.
    """
    for name, value in params.items():
        if isinstance(value, str) and "\x00" in value:
            raise InvalidArgument(
                f"parameter '{name}' contains a NUL character (U+0000), which a text value "
                "may not hold; send binary data as bytes"
            )


def _value_bytes(value: object) -> int:
    """About how many bytes a bound value adds to every row that shows it."""
    if value is None:
        return 1
    if isinstance(value, str):
        return 4 * len(value)  # at most 4 bytes a character in UTF-8, without encoding it
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    return 16
