"""What the gateway writes to its logs: failed queries with literals masked, never values."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from fabric.client import FabricClient
from fabric.errors import InvalidArgument, QueryRejected
from fabric.observability.logging import JsonFormatter, mask_literals
from tests.e2e.conftest import Harness

CANARY = "canary-7f3a9c"


@pytest.mark.parametrize(
    ("sql", "masked"),
    [
        (
            "SELECT name FROM t WHERE email = 'bob@example.com' AND id = 42",
            "SELECT name FROM t WHERE email = ? AND id = ?",
        ),
        (
            "SELECT $$hidden$$, E'a\\'b', 1.5e3, U&'d\\0061t' FROM t -- note",
            "SELECT ?, ?, ?, ? FROM t",
        ),
        ("SELECT 'unterminated secret", "SELECT ?"),
    ],
)
def test_literals_are_masked(sql: str, masked: str) -> None:
    assert mask_literals(sql) == masked


def _json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records]


def test_a_failed_query_is_logged_masked_and_a_good_one_not_at_all(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FabricClient(harness.address, timeout=10) as client:
        client.query(
            "shop", "SELECT id FROM orders WHERE note = :note AND id < 3", {"note": CANARY}
        )
        with pytest.raises(QueryRejected):
            client.query(
                "shop", f"SELECT email FROM customers WHERE name = '{CANARY}'", {"p": CANARY}
            )
        with pytest.raises(InvalidArgument):
            client.query("shop", "SELECT id FROM orders WHERE note = :note", {"wrong": CANARY})
    lines = _json_lines(caplog)
    everything = "\n".join(json.dumps(line) for line in lines) + caplog.text
    assert CANARY not in everything
    failures = [line for line in lines if line["message"].startswith("query failed")]
    assert [f["code"] for f in failures] == ["query_rejected", "invalid_argument"]
    assert failures[0]["sql"] == "SELECT email FROM customers WHERE name = ?"
    assert failures[0]["params"] == ["p"] and failures[0]["connection"] == "shop"
    assert failures[1]["sql"] == "SELECT id FROM orders WHERE note = :note"
