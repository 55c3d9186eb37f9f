"""An in-memory double of the connector contract, for testing what sits above it.

`MemoryConnector` answers `introspect` from the Arrow tables it is given and `execute`
with a scripted result (a table, or an error raised at a chosen batch), so the engine's
own work (limits, cache, coalescing, paging, cancellation, release) can be tested
without a database and with every step observable. It runs no SQL: the engine never
interprets a source's rows, it only streams them, so a scripted answer is all the
contract promises it.

A `SourceGate` holds reads at the source's door, so a test can line callers up or cut
one off mid-stream without sleeping.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from connectors.base import Connector, ConnectorConfig, ParamStyle, QueryHandle
from fabric.errors import Cancelled, DeadlineExceeded, FabricError
from fabric.model import ColumnInfo, TableInfo

WAIT_LIMIT = 10.0
"""Seconds a gate may hold a reader before the double fails the read: a test that
forgets to open a gate fails, it does not hang."""


class SourceGate:
    """Blocks every read until opened; `arrived` tells that a reader is waiting at it."""

    def __init__(self, *, open_: bool = True, passes: int | None = None) -> None:
        self._condition = threading.Condition()
        self._is_open = open_
        self._passes = passes
        """Reads let through before the gate closes by itself (None: no such limit)."""
        self.arrived = threading.Event()
        self.waiting = 0
        """Readers held at the gate now."""

    def open(self) -> None:
        with self._condition:
            self._is_open = True
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._is_open = False

    def held(self) -> int:
        """Readers held at the gate now."""
        with self._condition:
            return self.waiting if not self._is_open else 0

    def wake(self) -> None:
        """Let waiting readers look at their cancellation flag."""
        with self._condition:
            self._condition.notify_all()

    def pass_through(self, cancelled: threading.Event) -> None:
        """Wait until the gate opens or the query is cancelled."""
        self.arrived.set()
        with self._condition:
            if self._passes is not None:
                if self._passes == 0:
                    self._is_open = False
                self._passes -= 1
            self.waiting += 1
            try:
                if not self._condition.wait_for(
                    lambda: self._is_open or cancelled.is_set(), timeout=WAIT_LIMIT
                ):
                    raise TimeoutError("the test never opened the source gate")
            finally:
                self.waiting -= 1


@dataclass
class Execution:
    """One `execute` call as the source saw it, and what became of its handle."""

    sql: str
    params: tuple[Any, ...]
    timeout: float | None
    batch_rows: int
    cancels: int = 0
    closes: int = 0
    batches_read: int = 0


@dataclass
class Script:
    """What the next `execute` calls answer."""

    result: pa.Table
    fail_at_batch: int | None = None
    """Raise `error` instead of this batch (0 = before the first)."""
    error: FabricError | None = None
    gate: SourceGate = field(default_factory=SourceGate)
    lazy: bool = False
    """Run the query when the reader is first asked for (as the MySQL connector does, and
    PostgreSQL's when a column's type depends on the values): the first access blocks."""


class MemoryHandle(QueryHandle):
    """A scripted result streamed batch by batch through the script's gate."""

    def __init__(self, script: Script, execution: Execution, batch_rows: int) -> None:
        self._script = script
        self._execution = execution
        self._batches = script.result.to_batches(max_chunksize=batch_rows)
        self._cancelled = threading.Event()
        self._schema = script.result.schema
        self._reader: pa.RecordBatchReader | None = None
        if not script.lazy:
            self._reader = pa.RecordBatchReader.from_batches(self._schema, self._read())

    def _read(self) -> Any:
        for index in range(len(self._batches) + 1):
            self._script.gate.pass_through(self._cancelled)
            if self._cancelled.is_set():
                raise Cancelled("the query was cancelled")
            if self._script.fail_at_batch == index and self._script.error is not None:
                raise self._script.error
            if index == len(self._batches):
                return
            self._execution.batches_read += 1
            yield self._batches[index]

    @property
    def reader(self) -> pa.RecordBatchReader:
        if self._reader is None:
            batches = self._read()
            first = next(batches, None)
            ahead = [] if first is None else [first]
            self._reader = pa.RecordBatchReader.from_batches(
                self._schema, itertools.chain(ahead, batches)
            )
        return self._reader

    @property
    def schema(self) -> pa.Schema:
        return self.reader.schema if self._script.lazy else self._schema

    def cancel(self) -> None:
        self._execution.cancels += 1
        self._cancelled.set()
        self._script.gate.wake()

    def close(self) -> None:
        self._execution.closes += 1


class MemoryConnector(Connector):
    """Discovery from Arrow tables, results from a script; every execution recorded."""

    kind: ClassVar[str] = "duckdb"
    dialect: ClassVar[str] = "duckdb"
    param_style: ClassVar[ParamStyle] = ParamStyle.QMARK

    def __init__(self, tables: dict[str, pa.Table], schema: str = "main") -> None:
        super().__init__(ConnectorConfig({}))
        self.tables = tables
        self.schema_name = schema
        self.script: Script | None = None
        self.executions: list[Execution] = []
        self.closed = 0
        self._lock = threading.Lock()

    def answer(self, result: pa.Table, **options: Any) -> Script:
        self.script = Script(result, **options)
        return self.script

    def test(self) -> None:
        """Nothing to reach."""

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        return [
            TableInfo(
                self.schema_name,
                name,
                tuple(ColumnInfo(f.name, str(f.type), f.type, f.nullable) for f in table.schema),
                primary_key=(table.schema.names[0],),
            )
            for name, table in self.tables.items()
        ]

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the query's deadline had already passed")
        if self.script is None:
            raise AssertionError("the test gave the source no answer")
        execution = Execution(sql, tuple(params), timeout, batch_rows)
        with self._lock:
            self.executions.append(execution)
        return MemoryHandle(self.script, execution, batch_rows)

    def close(self) -> None:
        self.closed += 1
