"""Where the work ran, as PostgreSQL itself saw it: a PostgreSQL of its own logs every
statement (`log_statement=all`), and a federated query's filter, join and aggregate
over its entities are in the statements it received."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.federation_support import Sources, rows_of, run, sources
from tests.support.pg_instance import private_postgres

pytestmark = pytest.mark.postgres

PASSWORD = "unused-with-trust-" + secrets.token_hex(4)


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Sources, Path]]:
    log = tmp_path / "postgres.log"
    with private_postgres(
        PASSWORD, settings={"log_statement": "all"}, log=log, auth="trust"
    ) as instance:
        for fed in sources(tmp_path, pg_url=instance.url()):
            yield fed, log


def _logged(log: Path, marker: str, within: float = 20.0) -> str:
    """The log once it shows `marker` (polled with a deadline)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if marker in text:
            return text
        time.sleep(0.02)
    pytest.fail(f"{marker!r} never reached the PostgreSQL log")


def test_postgresql_receives_the_filter_join_and_aggregate_of_its_own_entities(
    logged: tuple[Sources, Path],
) -> None:
    fed, log = logged
    table = run(
        rows_of(
            fed.engine,
            "SELECT c.c_name, s.qty FROM mdb.customer c JOIN "
            "(SELECT o.o_custkey, sum(l.l_quantity) AS qty FROM pg.orders o "
            "JOIN pg.lineitem l ON l.l_orderkey = o.o_orderkey "
            "WHERE o.o_status = 'F' GROUP BY o.o_custkey) s ON s.o_custkey = c.c_custkey "
            "WHERE c.c_custkey <= 3",
        )
    )
    assert table.num_rows == 3
    text = _logged(log, '"l"."l_orderkey" = "o"."o_orderkey"')
    (statement,) = [line for line in text.splitlines() if '"lineitem" AS "l"' in line]
    assert '"o"."o_status" = \'F\'' in statement
    assert 'GROUP BY "o"."o_custkey"' in statement and "SUM(" in statement.upper()
    # The customer table is not PostgreSQL's: nothing of it reached this server.
    assert "customer" not in text
