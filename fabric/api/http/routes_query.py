"""Queries, previews and statements over REST: the same engine calls as the gRPC
QueryService (`execute`, `preview_request`, `open_statement`, `fetch`,
`close_statement`), counted under the protocol label `rest`, and each one written to
the caller's history (its SQL shape, never its values)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import decimal
import time
from collections.abc import Callable
from typing import Any

from fabric.api.http import schemas as s
from fabric.api.http import values
from fabric.api.http.body import Fields
from fabric.api.http.endpoint import Call, Endpoint
from fabric.context import Role
from fabric.errors import FabricError, InternalError, InvalidArgument
from fabric.query.engine import Page, QueryRequest
from fabric.query.runs import Summary

PROTOCOL = "rest"
_INT64 = 1 << 63

_TYPED: dict[str, Callable[[str], Any]] = {
    "decimal": decimal.Decimal,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timestamp": dt.datetime.fromisoformat,
    "bytes": lambda text: base64.b64decode(text, validate=True),
}


def _param(name: str, value: Any) -> Any:
    """A parameter from JSON: null, string, number, boolean, or a typed value
    `{"decimal"|"date"|"time"|"timestamp"|"bytes": "<text>"}`. The value itself is
    never quoted in an error."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else decimal.Decimal(value)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, text),) = value.items()
        parse = _TYPED.get(kind)
        if parse is not None and isinstance(text, str):
            try:
                return parse(text)
            except (ValueError, ArithmeticError, binascii.Error):
                raise InvalidArgument(f"parameter {name!r} is not a valid {kind}") from None
    raise InvalidArgument(
        f"parameter {name!r} must be null, a string, a number, a boolean or one of "
        f"{{{', '.join(_TYPED)}: text}}"
    )


def _query_request(body: Fields) -> QueryRequest:
    params = body.obj("params") or {}
    ttl = body.number("cache_ttl_seconds")
    return QueryRequest(
        connection=body.required_string("connection"),
        sql=body.required_string("sql"),
        params={name: _param(name, value) for name, value in params.items()},
        cache_ttl=ttl or 0.0,
        max_rows=body.integer("max_rows", minimum=1),
        protocol=PROTOCOL,
    )


def _result(data: bytes, summary: Summary) -> dict[str, Any]:
    schema, batches = values.read_ipc(data)
    return {
        "columns": values.columns(schema),
        "rows": values.rows(batches),
        "row_count": summary.rows,
        "truncated": summary.truncated,
        "from_cache": summary.from_cache,
        "elapsed_ms": summary.elapsed_us / 1000,
    }


async def _execute(call: Call, request: QueryRequest) -> dict[str, Any]:
    """Run `request` through the gateway's execute (the engine's, or the bus forwarder's
    on a platform), the whole result in memory: it is bounded by the row and byte caps
    the engine applies."""
    started = time.perf_counter()
    status = "error"
    summary: Summary | None = None
    try:
        chunks: list[bytes] = []
        items = call.services.execute(call.ctx, request, None)
        try:
            async for item in items:
                if isinstance(item, Summary):
                    summary = item
                else:
                    chunks.append(item)
        finally:
            await items.aclose()  # type: ignore[attr-defined]
        if summary is None:
            raise InternalError("the result ended without its summary")
        # Decoding many rows takes a while: off the event loop.
        result = await asyncio.to_thread(_result, b"".join(chunks), summary)
        status = "ok"
        return result
    except FabricError as error:
        status = error.code
        raise
    finally:
        call.services.history.record(
            call.ctx,
            request.connection,
            request.sql,
            rows=summary.rows if summary is not None else 0,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            from_cache=summary.from_cache if summary is not None else False,
            status=status,
        )


async def query(call: Call) -> Any:
    call.body.only("connection", "sql", "params", "cache_ttl_seconds", "max_rows")
    return await _execute(call, _query_request(call.body))


async def preview(call: Call) -> Any:
    call.body.only("limit")
    limit = call.body.integer("limit", minimum=1, maximum=1_000_000) or 0
    request = await call.services.engine.preview_request(
        call.ctx, call.path("name"), call.path("entity"), limit
    )
    return await _execute(call, dataclasses.replace(request, protocol=PROTOCOL))


def _page(page: Page, started: float) -> dict[str, Any]:
    schema, batches = values.read_ipc(page.arrow_ipc)
    summary = page.summary
    return {
        "statement_id": page.statement_id or None,
        "columns": values.columns(schema),
        "rows": values.rows(batches),
        "row_count": page.rows,
        "done": page.done,
        "truncated": summary.truncated if summary is not None else False,
        "from_cache": summary.from_cache if summary is not None else False,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _page_size(body: Fields) -> int:
    return body.integer("page_size", minimum=1, maximum=1_000_000) or 0


async def open_statement(call: Call) -> Any:
    body = call.body
    body.only("connection", "sql", "params", "page_size", "cache_ttl_seconds", "max_rows")
    request = _query_request(body)
    page_size = _page_size(body)
    started = time.perf_counter()
    status = "error"
    rows = 0
    try:
        page = await call.services.engine.open_statement(call.ctx, request, page_size, None)
        rows = page.rows
        status = "ok"
        return await asyncio.to_thread(_page, page, started)
    except FabricError as error:
        status = error.code
        raise
    finally:
        call.services.history.record(
            call.ctx,
            request.connection,
            request.sql,
            rows=rows,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            from_cache=False,
            status=status,
        )


async def next_page(call: Call) -> Any:
    call.body.only("page_size")
    started = time.perf_counter()
    page = await call.services.engine.fetch(
        call.ctx, call.path("statement_id"), _page_size(call.body)
    )
    return await asyncio.to_thread(_page, page, started)


async def close_statement(call: Call) -> Any:
    await call.services.engine.close_statement(call.ctx, call.path("statement_id"))
    return {"closed": True}


async def history(call: Call) -> Any:
    return [entry.as_json() for entry in call.services.history.of(call.ctx)]


_STATEMENT = "/api/v1/statements/{statement_id}"

ENDPOINTS = [
    Endpoint(
        "POST", "/api/v1/query", query, Role.DEVELOPER,
        "Run a query; the whole result (within the row and byte caps)", "query",
        s.RESULT, s.QUERY,
    ),
    Endpoint(
        "POST", "/api/v1/connections/{name}/entities/{entity}/preview", preview,
        Role.DEVELOPER, "The first rows of a selected entity", "query",
        s.RESULT, s.obj(limit=s.INTEGER),
    ),
    Endpoint(
        "POST", "/api/v1/statements", open_statement, Role.DEVELOPER,
        "Open a statement and read its first page", "query", s.PAGE, s.OPEN_STATEMENT,
    ),
    Endpoint(
        "POST", f"{_STATEMENT}/next", next_page, Role.DEVELOPER,
        "The next page of an open statement", "query", s.PAGE, s.obj(page_size=s.INTEGER),
    ),
    Endpoint(
        "DELETE", _STATEMENT, close_statement, Role.DEVELOPER, "Close an open statement",
        "query", s.obj(closed=s.BOOLEAN),
    ),
    Endpoint(
        "GET", "/api/v1/history", history, Role.DEVELOPER,
        "The caller's recent queries: SQL shape, timing, rows, outcome (never values)",
        "query", s.HISTORY,
    ),
]  # fmt: skip
