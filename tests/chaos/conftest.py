"""The chaos suite: faults under load, with what callers got, recovery and leftovers
checked. Short versions run with the normal suite; `make chaos` (FABRIC_CHAOS=long) runs
the long ones and writes each scenario's figures to FABRIC_CHAOS_REPORT (JSON lines),
from which `python -m tests.chaos.report` renders the README's table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.support.chaos import LONG

Record = Callable[..., None]


@pytest.fixture
def record() -> Record:
    """Write one scenario's figures (scenario, load, fault, callers, recovery_s, ...)."""

    def write(**figures: Any) -> None:
        path = os.environ.get("FABRIC_CHAOS_REPORT")
        if not path:
            return
        figures["version"] = "long" if LONG else "short"
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(figures, default=_plain) + "\n")

    return write


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)
