"""Render the chaos suite's figures (JSON lines from FABRIC_CHAOS_REPORT) as the README's
markdown table: `python -m tests.chaos.report chaos-results.jsonl`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def row(figures: dict[str, Any]) -> str:
    callers = ", ".join(f"{code} {n}" for code, n in sorted(figures["callers"].items()))
    recovery = figures.get("recovery_s")
    recovered = "n/a" if recovery is None else f"{recovery:.1f} s"
    cells = [
        figures["scenario"],
        figures["load"],
        figures["fault"],
        callers,
        recovered,
        figures.get("note", ""),
    ]
    return "| " + " | ".join(cells) + " |"


def render(lines: list[str]) -> str:
    out = [
        "| scenario | load | fault | what callers got | recovery | also |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    out += [row(json.loads(line)) for line in lines if line.strip()]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    print(render(Path(argv[0]).read_text(encoding="utf-8").splitlines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
