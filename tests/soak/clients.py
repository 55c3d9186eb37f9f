"""One soak load process: `threads` clients of the mixed load, each its own principal,
plus one greedy client that goes over its share of open statements on purpose.

`python -m tests.soak.clients` reads one JSON object on standard input::

    {"address": "127.0.0.1:50061", "tokens": ["...", ...], "greedy_token": "...",
     "share": 4, "until": <time.time() at which to stop>, "out": "/path/calls.jsonl",
     "seed": 7}

and writes one JSON line per call to `out` when it ends: the kind of call, its start
and end (Unix seconds, so the runner lines them up with its RSS samples), the outcome
("OK", the gRPC status name, or "WRONG" for a result that is not what the query must
return) and whether that outcome was expected (a cancelled scan is; a caller over its
share refused with RESOURCE_EXHAUSTED is; nothing else but OK).
"""

from __future__ import annotations

import functools
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from fabric.client import FabricClient
from fabric.errors import FabricError

ITEMS = 200_000
AGGREGATE = "SELECT grp, count(*) AS n, max(payload) AS top FROM items WHERE grp < :g GROUP BY grp"
POINT = "SELECT id, grp, payload FROM items WHERE id = :id"
RANGE = "SELECT id, payload FROM items WHERE id <= :n"
SCAN_ROWS = 40_000
STATEMENT_ROWS = 5_000
PAGE_ROWS = 1_000
AGGREGATE_TTL = 5
"""Seconds a cached aggregate lives: entries expire and are built again all along, so
the cache's memory churns instead of filling once."""

KINDS = ("aggregate", "point", "scan", "statement", "cancel")
WEIGHTS = (30, 40, 10, 15, 5)


@dataclass(frozen=True, slots=True)
class Call:
    kind: str
    started: float
    ended: float
    outcome: str
    expected: bool


class WrongResult(Exception):
    """A result that is not what the query must return."""


def _check(condition: bool) -> None:
    if not condition:
        raise WrongResult


def aggregate(client: FabricClient, rng: random.Random) -> None:
    groups = rng.randint(1, 20)
    result = client.execute("pg", AGGREGATE, {"g": groups}, cache_ttl=AGGREGATE_TTL)
    _check(result.table.num_rows == groups and not result.summary.truncated)
    _check(sum(result.table.column("n").to_pylist()) == groups * (ITEMS // 100))


def point(client: FabricClient, rng: random.Random) -> None:
    key = rng.randint(1, ITEMS)
    result = client.execute("pg", POINT, {"id": key})
    _check(result.table.column("id").to_pylist() == [key])


def scan(client: FabricClient, rng: random.Random) -> None:
    rows = 0
    with client.stream("pg", RANGE, {"n": SCAN_ROWS}) as stream:
        for batch in stream:
            rows += batch.num_rows
        summary = stream.summary
    _check(rows == SCAN_ROWS and summary is not None and not summary.truncated)


def statement(client: FabricClient, rng: random.Random) -> None:
    """Open a statement, read some pages (sometimes all), close it."""
    pages = rng.choice((1, 2, 3, STATEMENT_ROWS // PAGE_ROWS))
    with client.open_statement("pg", RANGE, {"n": STATEMENT_ROWS}, page_rows=PAGE_ROWS) as opened:
        for _ in range(pages):
            page = opened.fetch()
            _check(page is not None and page.num_rows == PAGE_ROWS)
        opened.close()


def cancel(client: FabricClient, rng: random.Random) -> None:
    """A whole-table scan the caller gives up on after its first batch."""
    with client.stream("pg", RANGE, {"n": ITEMS}) as stream:
        for batch in stream:
            _check(batch.num_rows > 0)
            stream.cancel()
            break


WORK: dict[str, Callable[[FabricClient, random.Random], None]] = {
    "aggregate": aggregate,
    "point": point,
    "scan": scan,
    "statement": statement,
    "cancel": cancel,
}


def _outcome(fn: Callable[[], None]) -> str:
    try:
        fn()
    except WrongResult:
        return "WRONG"
    except FabricError as error:
        from fabric.api.status import status_for

        return status_for(error).name
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def _mixed(address: str, token: str, until: float, seed: int, calls: list[Call]) -> None:
    rng = random.Random(seed)
    with FabricClient(address, token, timeout=60) as client:
        while time.time() < until:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            started = time.time()
            outcome = _outcome(functools.partial(WORK[kind], client, rng))
            calls.append(Call(kind, started, time.time(), outcome, outcome == "OK"))


def _greedy(address: str, token: str, share: int, until: float, calls: list[Call]) -> None:
    """Hold `share` statements open, ask for one more (refused: over its share), close
    them all; again until the end."""
    with FabricClient(address, token, timeout=60) as client:
        while time.time() < until:
            held = []
            try:
                for index in range(share + 1):
                    over = index == share
                    started = time.time()
                    try:
                        held.append(
                            client.open_statement(
                                "pg", RANGE, {"n": STATEMENT_ROWS}, page_rows=PAGE_ROWS
                            )
                        )
                        outcome = "OK"
                    except FabricError as error:
                        from fabric.api.status import status_for

                        outcome = status_for(error).name
                    expected = outcome == ("RESOURCE_EXHAUSTED" if over else "OK")
                    calls.append(Call("over_share", started, time.time(), outcome, expected))
            finally:
                for opened in held:
                    opened.close()
            time.sleep(0.2)  # a paced offender: the point is its refusal, not its volume


def run(spec: dict[str, Any]) -> list[Call]:
    calls: list[Call] = []
    threads = [
        threading.Thread(
            target=_mixed,
            args=(spec["address"], token, spec["until"], spec["seed"] * 100 + i, calls),
        )
        for i, token in enumerate(spec["tokens"])
    ]
    threads.append(
        threading.Thread(
            target=_greedy,
            args=(spec["address"], spec["greedy_token"], spec["share"], spec["until"], calls),
        )
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return calls


def main() -> int:
    spec = json.loads(sys.stdin.read())
    calls = run(spec)
    with open(spec["out"], "w", encoding="utf-8") as out:
        for one in calls:
            out.write(json.dumps(asdict(one)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
