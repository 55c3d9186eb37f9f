from __future__ import annotations

from collections.abc import Iterator

import pytest

from fabric.clock import FakeClock
from tests.support.chaos import fill_postgres
from tests.support.pg_instance import PgInstance, private_postgres
from tests.support.servers import postgres_url as _postgres_url


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real PostgreSQL server (skips, or fails under CI=true, when none)."""
    return _postgres_url()


@pytest.fixture(scope="session")
def items_postgres() -> Iterator[PgInstance]:
    """A private PostgreSQL with the fault tests' tables (tests.support.chaos), shared by
    the tests that freeze, restart or cut it; each leaves it running and thawed."""
    with private_postgres("Fault-Tests-5e2a") as instance:
        fill_postgres(instance)
        yield instance
