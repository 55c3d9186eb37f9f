"""The soak run, short (about 45 s of load; `make soak` runs the 10-minute one): a
`fabric serve` process with its own PostgreSQL under mixed load from several client
processes keeps its memory flat after the warm-up, its p99 in a band, gives no caller an
unexpected outcome, and leaves nothing behind (criteria: tests/soak/run.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.soak.run import soak

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


def test_soak_short(tmp_path: Path) -> None:
    seconds = float(os.environ.get("FABRIC_SOAK_SECONDS", 45))
    report = soak(seconds, processes=3, threads=2, workdir=tmp_path)
    print(report.table())
    assert report.passed, report.table()
