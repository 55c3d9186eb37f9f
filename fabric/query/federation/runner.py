"""Running a federated plan: each fragment at its source, streamed into an embedded
DuckDB connection of the query's own (memory cap, spill directory, no file access),
which runs the remainder and streams its result.

The run is a `QueryHandle`, so the engine treats it as it treats any source's query:
row and byte caps, the result cache, paging, cancellation and deadlines. Nothing runs
until the result's schema or rows are first asked for (in the query's lane, once the
engine holds the run and can cancel it); `cancel` interrupts DuckDB and cancels every
source statement; the query's deadline does the same from a timer. Sources' rows reach
DuckDB as Arrow streams (registered RecordBatchReaders), never as Python rows; only a
dynamic filter's probe side, bounded by FABRIC_FEDERATION_DYNAMIC_FILTER_ROWS, is held
whole.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from connectors import Connector, ConnectorConfig, QueryHandle
from connectors.base import ParamStyle
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    InternalError,
    ResourceExhausted,
    SourceQueryError,
)
from fabric.model import TableInfo
from fabric.query.compiler import CompiledStatement
from fabric.query.federation.plan import (
    DUCKDB_PART,
    DynamicFilter,
    FederatedPlan,
    Fragment,
    PartStats,
    SourceSide,
)
from fabric.query.federation.planner import DYNAMIC_PREFIX, FederationPlanner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DuckDBLimits:
    memory: int
    threads: int
    temp_root: Path
    dynamic_filter_rows: int


class FederatedSource(Connector):
    """One federated query's sources, seen by the engine as one connector."""

    kind = "federation"
    dialect = "duckdb"
    param_style = ParamStyle.QMARK

    def __init__(
        self,
        plan: FederatedPlan,
        connectors: Mapping[str, Connector],
        sides: Mapping[str, SourceSide],
        planner: FederationPlanner,
        limits: DuckDBLimits,
    ) -> None:
        super().__init__(ConnectorConfig({}))
        self.plan = plan
        self.connectors = dict(connectors)
        self.sides = dict(sides)
        self.planner = planner
        self.limits = limits
        self.runs: list[FederatedRun] = []
        """Runs started through this object (EXPLAIN reads their figures)."""
        self.revoked: Callable[[], None] = lambda: None
        """Raises when a source's part of the query is no longer allowed."""

    def test(self) -> None:
        """Nothing to test: each source is tested on its own."""

    def introspect(self, schemas: object = None) -> list[TableInfo]:
        return []

    def execute(
        self,
        sql: str,
        params: Any = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        values = dict(zip(self.plan.param_names, params, strict=True))
        run = FederatedRun(self, values, timeout, batch_rows)
        self.runs.append(run)
        return run

    def close(self) -> None:
        """The sources' connectors belong to the engine's registry."""


class FederatedRun(QueryHandle):
    def __init__(
        self,
        source: FederatedSource,
        values: Mapping[str, Any],
        timeout: float | None,
        batch_rows: int,
    ) -> None:
        self.source = source
        self.plan = source.plan
        self.values = dict(values)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.batch_rows = batch_rows
        self.stats: dict[str, PartStats] = {
            fragment.name: PartStats(sql=fragment.compiled.sql) for fragment in self.plan.fragments
        }
        self.stats[DUCKDB_PART] = PartStats(sql=self.plan.remainder)
        self._lock = threading.Lock()
        self._handles: list[QueryHandle] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        self._reader: pa.RecordBatchReader | None = None
        self._failure: BaseException | None = None
        self._cancelled = False
        self._expired = False
        self._closed = False
        self._timer: threading.Timer | None = None
        self.spill_dir = source.limits.temp_root / uuid.uuid4().hex

    # -- QueryHandle ------------------------------------------------------------------------

    @property
    def reader(self) -> pa.RecordBatchReader:
        if self._reader is None:
            self._reader = self._start()
        return self._reader

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            con, handles = self._con, list(self._handles)
        self._stop(con, handles)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            con, handles = self._con, list(self._handles)
            self._con = None
            timer = self._timer
        if timer is not None:
            timer.cancel()
        for handle in handles:
            _quietly(handle.close)
        if con is not None:
            _quietly(con.interrupt)
            _quietly(con.close)
        self._reader = None
        self.values = {}  # the parameters go with the query
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    # -- running ---------------------------------------------------------------------------

    def _stop(self, con: duckdb.DuckDBPyConnection | None, handles: list[QueryHandle]) -> None:
        if con is not None:
            _quietly(con.interrupt)
        for handle in handles:
            _quietly(handle.cancel)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            con, handles = self._con, list(self._handles)
        self._stop(con, handles)

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the federated query ran past its timeout")
        return left

    def _check(self) -> None:
        if self._closed or self._cancelled:
            raise Cancelled("the query was cancelled")
        if self._expired:
            raise DeadlineExceeded("the federated query ran past its timeout")

    def _start(self) -> pa.RecordBatchReader:
        self._check()
        limits = self.source.limits
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": f"{max(1, limits.memory // (1 << 20))}MB",
                "threads": limits.threads,
                "temp_directory": str(self.spill_dir),
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            },
        )
        # Fabric SQL divides integers as PostgreSQL does (7 / 2 = 3).
        con.execute("SET integer_division = true")
        # The remainder reads the registered streams only: no files, no settings changes.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        with self._lock:
            if self._closed or self._cancelled:
                con.close()
                raise Cancelled("the query was cancelled")
            self._con = con
        if self.deadline is not None:
            timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
            timer.daemon = True
            self._timer = timer
            timer.start()
        try:
            filtered = {df.target: df for df in self.plan.dynamic_filters}
            probes: dict[str, list[DynamicFilter]] = {}
            for planned in self.plan.dynamic_filters:
                probes.setdefault(planned.probe, []).append(planned)
            keys: dict[str, list[Any] | None] = {}
            # Probes first, each once its own probe (a chain) has given it its keys.
            waiting = [f for f in self.plan.fragments if f.name in probes]
            while waiting:
                ready = [
                    f
                    for f in waiting
                    if f.name not in filtered
                    or filtered[f.name].probe not in {w.name for w in waiting}
                ] or waiting[:1]  # the planner makes no cycles; never wait forever
                for fragment in ready:
                    compiled, extra = self._filtered(fragment, filtered, keys)
                    handle = self._execute(fragment, compiled, extra)
                    keys.update(self._probe(con, fragment, handle, probes[fragment.name]))
                    waiting.remove(fragment)
            for fragment in self.plan.fragments:
                if fragment.name in probes:
                    continue
                compiled, extra = self._filtered(fragment, filtered, keys)
                handle = self._execute(fragment, compiled, extra)
                con.register(fragment.name, self._counted(fragment.name, handle))
            self._check()
            params = {name: self.values[name] for name in self.plan.remainder_params}
            reader = con.sql(self.plan.remainder, params=params).to_arrow_reader(self.batch_rows)
        except BaseException as error:
            raise self._explained(error) from None
        return pa.RecordBatchReader.from_batches(reader.schema, self._output(reader))

    def _execute(
        self, fragment: Fragment, compiled: CompiledStatement, extra: Mapping[str, Any]
    ) -> QueryHandle:
        values = {**self.values, **extra}
        args = tuple(values[name] for name in compiled.param_names)
        connector = self.source.connectors[fragment.connection]
        handle = connector.execute(
            compiled.sql, args, timeout=self._remaining(), batch_rows=self.batch_rows
        )
        with self._lock:
            self._handles.append(handle)
            stopped = self._cancelled or self._closed or self._expired
        if stopped:
            handle.cancel()
            self._check()
        return handle

    def _filtered(
        self,
        fragment: Fragment,
        filtered: Mapping[str, DynamicFilter],
        keys: Mapping[str, list[Any] | None],
    ) -> tuple[CompiledStatement, dict[str, Any]]:
        """The statement a fragment runs: with its dynamic filter when its probe gave
        keys, as planned otherwise."""
        df = filtered.get(fragment.name)
        found = keys.get(fragment.name)
        compiled: CompiledStatement = fragment.compiled
        extra: dict[str, Any] = {}
        if df is not None and found is not None:
            compiled, extra = self._with_keys(fragment, df, found)
            self.stats[fragment.name].dynamic_filter = f"applied ({len(found)} keys)"
        elif df is not None:
            self.stats[fragment.name].dynamic_filter = "skipped (probe side too large)"
        self.stats[fragment.name].sql = compiled.sql
        return compiled, extra

    def _probe(
        self,
        con: duckdb.DuckDBPyConnection,
        fragment: Fragment,
        handle: QueryHandle,
        filters: list[DynamicFilter],
    ) -> dict[str, list[Any] | None]:
        """Read the probe side up to the bound; when it fits (its rows then held,
        bounded), the distinct join keys each target gets, by target (None for a target
        whose source cannot take that many parameters); none when it does not fit (the
        rest then streams)."""
        bound = self.source.limits.dynamic_filter_rows
        stats = self.stats[fragment.name]
        held: list[pa.RecordBatch] = []
        rows = 0
        batches = iter(handle.reader)
        for batch in batches:
            self.source.revoked()
            held.append(batch)
            rows += batch.num_rows
            stats.rows += batch.num_rows
            stats.bytes += batch.nbytes
            if rows > bound:
                break
        else:
            table = pa.Table.from_batches(held, handle.schema)
            con.register(fragment.name, table)
            found: dict[str, list[Any] | None] = {}
            for df in filters:
                values = table.column(df.probe_column).unique().drop_null().to_pylist()
                target = self.plan.fragment(df.target)
                side = self.source.sides[target.connection]
                room = side.max_parameters - len(target.compiled.param_names)
                found[df.target] = values if len(values) <= room else None
            note = "probe: read first, its keys sent"
            stats.dynamic_filter = (
                f"{stats.dynamic_filter}; {note}" if stats.dynamic_filter else note
            )
            return found
        note = f"probe over {bound} rows: no filter sent"
        stats.dynamic_filter = f"{stats.dynamic_filter}; {note}" if stats.dynamic_filter else note
        rest = self._counted(fragment.name, handle, batches)
        chained = pa.RecordBatchReader.from_batches(handle.schema, _chain(held, rest))
        con.register(fragment.name, chained)
        return {}

    def _with_keys(
        self, fragment: Fragment, df: DynamicFilter, keys: list[Any]
    ) -> tuple[CompiledStatement, dict[str, Any]]:
        """The target fragment reading only rows whose key is one of `keys`: an IN list
        of bound parameters, its length rounded up to a power of two (the last key
        repeated) so that a source sees few distinct statements, within the parameters
        its source takes (`_probe` sent no more keys than that)."""
        side = self.source.sides[fragment.connection]
        room = side.max_parameters - len(fragment.compiled.param_names)
        size = 1
        while size < len(keys):
            size *= 2
        size = max(len(keys), min(size, room), 1)
        with fragment.lock:
            compiled = fragment.variants.get(size)
        if compiled is None:
            tree = fragment.tree.copy()
            assert isinstance(tree, exp.Select)
            names = [f"{DYNAMIC_PREFIX}{i}" for i in range(size)]
            tree.where(
                exp.In(
                    this=df.target_column.copy(),
                    expressions=[exp.Placeholder(this=name) for name in names],
                ),
                copy=False,
            )
            side = self.source.sides[fragment.connection]
            compiled = self.source.planner.compile_fragment(fragment, side, tree)
            with fragment.lock:
                fragment.variants[size] = compiled
        padded = keys + [keys[-1]] * (size - len(keys)) if keys else [None] * size
        return compiled, {f"{DYNAMIC_PREFIX}{i}": value for i, value in enumerate(padded)}

    def _counted(
        self,
        name: str,
        handle: QueryHandle,
        batches: Iterator[pa.RecordBatch] | None = None,
    ) -> pa.RecordBatchReader:
        stats = self.stats[name]
        source = batches if batches is not None else iter(handle.reader)

        def read() -> Iterator[pa.RecordBatch]:
            try:
                for batch in source:
                    self.source.revoked()
                    stats.rows += batch.num_rows
                    stats.bytes += batch.nbytes
                    yield batch
            except BaseException as error:
                with self._lock:
                    if self._failure is None:
                        self._failure = error
                raise

        return pa.RecordBatchReader.from_batches(handle.schema, read())

    def _output(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        stats = self.stats[DUCKDB_PART]
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except BaseException as error:
                raise self._explained(error) from None
            stats.rows += batch.num_rows
            stats.bytes += batch.nbytes
            yield batch

    def _explained(self, error: BaseException) -> BaseException:
        """The error the caller is told: the deadline or the stop that interrupted the
        run (its sources then fail as cancelled), else a source's own error; DuckDB's
        own text is never passed on (it may quote values)."""
        if self._expired:
            return DeadlineExceeded(
                "the federated query ran past its timeout; narrow it or raise the timeout"
            )
        if self._cancelled or self._closed:
            return Cancelled("the query was cancelled")
        if self._failure is not None and isinstance(self._failure, FabricError):
            return self._failure
        if isinstance(error, FabricError):
            return error
        if isinstance(error, duckdb.OutOfMemoryException):
            return ResourceExhausted(
                "the federated query needed more memory than FABRIC_FEDERATION_MEMORY "
                "and its spill space allow; narrow it or raise the limit"
            )
        if isinstance(error, duckdb.Error):
            log.info("federated remainder failed: %s", type(error).__name__)
            return SourceQueryError(
                f"the federated part of the query failed in DuckDB ({type(error).__name__})"
            )
        if isinstance(error, Exception):
            return InternalError("the federated query failed")
        return error


def _chain(held: list[pa.RecordBatch], rest: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    yield from held
    held.clear()
    yield from rest


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # stopping must not fail the stop of the other parts
        log.debug("stopping a federated part failed", exc_info=False)
