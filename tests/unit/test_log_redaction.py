"""Library log records are written as their template with every argument replaced: a
pool's FATAL text, a connection string or a value never reaches a log line."""

from __future__ import annotations

import json
import logging

import pytest

from fabric.observability.logging import JsonFormatter, TextFormatter

FATAL = 'connection failed: FATAL:  database "Customer-Ledger-2024" does not exist'


def _record(
    name: str, msg: str, *args: object, exc: BaseException | None = None
) -> logging.LogRecord:
    return logging.LogRecord(
        name, logging.WARNING, __file__, 1, msg, args, (type(exc), exc, None) if exc else None
    )


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_a_librarys_record_keeps_its_template_and_loses_its_arguments(
    formatter: logging.Formatter,
) -> None:
    pool = _record("psycopg.pool", "error connecting in %r: %s", "fabric-pg", ValueError(FATAL))
    line = formatter.format(pool)
    assert "Customer-Ledger" not in line and "FATAL" not in line
    assert "error connecting in" in line and "ValueError" in line
    failed = _record("asyncio", "Task exception: %(detail)s", exc=RuntimeError(FATAL))
    failed.args = {"detail": FATAL}  # a mapping of arguments, as logging allows
    assert "Customer-Ledger" not in formatter.format(failed)
    own = _record("fabric.query.engine", "query failed: %s", "kept")
    assert "query failed: kept" in formatter.format(own)


def test_json_lines_of_libraries_carry_no_extra_fields() -> None:
    record = _record("nats.aio.client", "reconnecting to %s", "nats://user:pw@host:4222")
    record.server = "nats://user:pw@host:4222"  # an `extra` field a library might set
    entry = json.loads(JsonFormatter().format(record))
    assert "pw@" not in json.dumps(entry) and "server" not in entry
    assert entry["message"] == "reconnecting to <redacted>"
