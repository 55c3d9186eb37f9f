from __future__ import annotations

import pytest

from fabric.clock import FakeClock
from tests.support.servers import postgres_url as _postgres_url


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a real PostgreSQL server (skips, or fails under CI=true, when none)."""
    return _postgres_url()
