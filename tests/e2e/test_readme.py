"""The README's walk-through ("Using it") runs as written: every `sh` block in order in a
shell of its own on a terminal (the password prompt is answered, as a person would), the
block that starts the gateway in the background, the Python block with the venv's
Python. Against PostgreSQL at 127.0.0.1:5432, as the README says; only FABRIC_HOME and
the ports are the test's own, so nothing here touches a developer's setup."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import pexpect
import psycopg
import pytest

from tests.support.nats import private_nats_server
from tests.support.servers import _in_ci

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)


def section_blocks(heading: str) -> list[tuple[str, str]]:
    """The (language, text) of each `sh` and `python` block of a README section (`## ...`)."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {heading}\n")
    end = readme.index("\n## ", start + 1)
    return [(m[1], m[2]) for m in BLOCK.finditer(readme[start:end])]


def walkthrough() -> list[tuple[str, str]]:
    """The (language, text) of each code block of the README's "Using it" section."""
    return section_blocks("Using it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, postgres_url: str) -> Iterator[dict[str, str]]:
    if shutil.which("psql") is None:
        reason = "psql (the PostgreSQL client) is not installed; the README uses it"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    yield {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PG"))},
        "FABRIC_HOME": str(tmp_path / "home"),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": str(_free_port()),
        "PAGER": "",  # a terminal that never needs scrolling
        "TERM": "xterm",
    }
    # The sample data the walk-through loaded (examples/sales.sql) goes again.
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sales CASCADE")


@contextmanager
def _in_background(text: str, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """A block that starts a gateway, run in the background (a terminal of its own) until
    the gateway answers on FABRIC_LISTEN; stopped with Ctrl-C (SIGINT) at the end, as the
    README says."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["bash", "-e", "-c", text],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield
    finally:
        _stop_group(process.pid, signal.SIGINT)
        process.wait(timeout=10)
        log.close()


def _group_members(pgid: int) -> list[int]:
    """The processes of a process group (what a block left running with `&`)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # After the command name in parentheses: state, ppid, pgrp, ...
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members.append(int(entry.name))
    return members


def _stop_group(pgid: int, sig: signal.Signals, grace: float = 30.0) -> None:
    """Signal every process of the group and wait (on pidfds, no polling) until each has
    exited; what outlives `grace` is killed."""
    waiting = {}
    for pid in _group_members(pgid):
        try:
            waiting[os.pidfd_open(pid)] = pid
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
    try:
        deadline = time.monotonic() + grace
        while waiting:
            ready, _, _ = select.select(
                list(waiting), [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                for pid in waiting.values():
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                continue
            for fd in ready:
                del waiting[fd]
                os.close(fd)
    finally:
        for fd in waiting:
            os.close(fd)


@pytest.fixture
def gateway_block(env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """The walk-through's block that runs `fabric serve`, in the background."""
    (serve,) = [text for lang, text in walkthrough() if re.search(r"^fabric serve\b", text, re.M)]
    with _in_background(serve, env, tmp_path / "serve.log"):
        yield


def _run_on_a_terminal(text: str, env: dict[str, str]) -> str:
    """One block in `bash -e` on a pseudo-terminal; a password prompt gets a password
    (the server trusts local connections, so any will do). Its output, or a failure."""
    shell = pexpect.spawn(
        "bash",
        ["-e", "-c", text],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    output = []
    while True:
        found = shell.expect(["password: ", pexpect.EOF])
        output.append(shell.before or "")
        if found == 1:
            break
        shell.sendline("walkthrough-password")
    shell.close()
    transcript = "".join(output)
    assert shell.exitstatus == 0, f"README block failed:\n{text}\n--- output ---\n{transcript}"
    return transcript


def _run_python(text: str, env: dict[str, str]) -> str:
    """A Python block with the venv's Python (and `fabric` on PATH); its output."""
    done = subprocess.run(
        [sys.executable, "-c", text],
        cwd=ROOT,
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"README block failed:\n{text}\n--- stderr ---\n{done.stderr}"
    return done.stdout


def test_the_readme_walkthrough_runs_as_written(env: dict[str, str], gateway_block: None) -> None:
    blocks = walkthrough()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sh", "python"]
    outputs = []
    for lang, text in blocks:
        if re.search(r"^fabric serve\b", text, re.M):
            continue
        if lang == "sh":
            outputs.append(_run_on_a_terminal(text, env))
        else:
            outputs.append(_run_python(text, env))
    admin, app, python = outputs
    assert "created connection 'sales' (postgres) for stage '*', tested" in admin
    assert "password sealed in the secret store" in admin
    assert "connection 'sales' works in stage 'development'" in admin
    assert "sales.orders [table] key(id)" in admin
    assert "customers = sales.customers key(id): id integer, name text, country text" in admin
    assert "-- 5 rows" in admin  # the preview
    assert re.search(r"DE\s+\|\s+40\b", app) and " FR " not in app
    assert "id,customer_id,amount,placed_at" in app
    assert "2024-11-25T00:" in app
    assert "-- 3 rows" in app
    assert python.splitlines()[0].split() == ["1", "False", "False"]  # rows, truncated, cached
    assert python.splitlines()[-1] == "['customers', 'orders']"


def test_the_flight_sql_rest_and_scaling_out_recipes_run_as_written(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The Arrow Flight SQL section (a gateway with Flight SQL on, then ADBC from Python),
    the REST section (a gateway with HTTP on, a sign-in link, a query with curl) and the
    Scaling out recipe (a platform and three replicas over NATS, a query sent to
    the replicas, a preview through the platform), on the walk-through's `sales` data."""
    # A reader of these sections has the venv activated, as the walk-through does.
    env = {**env, "PATH": f"{ROOT / '.venv' / 'bin'}:{Path(sys.executable).parent}:{env['PATH']}"}
    using_it = walkthrough()
    (serve,) = [text for lang, text in using_it if re.search(r"^fabric serve\b", text, re.M)]
    with _in_background(serve, env, tmp_path / "serve.log"):
        _run_on_a_terminal(using_it[1][1], env)  # load the data, register and select it

    flight = section_blocks("Arrow Flight SQL")
    assert [lang for lang, _ in flight] == ["sh", "python", "python"]
    with _in_background(flight[0][1], env, tmp_path / "flight.log"):
        session = _run_python(flight[1][1], env).splitlines()
        out = _run_python(flight[2][1], env).splitlines()
    assert '"sales"' in session[0] and session[1] == "2"  # the session's connection, max_rows
    rows, columns = out[0].split(" ", 1)
    assert int(rows) > 0 and columns == "['id', 'amount']"
    assert out[1] == "['id', 'customer_id', 'amount', 'placed_at']"

    rest = section_blocks("REST API and portal")
    assert [lang for lang, _ in rest] == ["sh", "sh", "sh"]
    with _in_background(rest[0][1], env, tmp_path / "rest.log"):
        link = _run_on_a_terminal(rest[1][1], env)
        answer = json.loads(_run_on_a_terminal(rest[2][1], env))
    assert re.search(r"http://127\.0\.0\.1:8443/#signin=\S+", link)
    assert answer["columns"][0]["name"] == "id" and answer["row_count"] == len(answer["rows"])
    assert answer["rows"] and all(float(amount) > 100 for _, amount in answer["rows"])

    ((lang, recipe),) = [b for b in section_blocks("Scaling out") if "--role runtime" in b[1]]
    assert lang == "sh"
    with private_nats_server(tmp_path) as nats:
        log = open(tmp_path / "scaling.log", "w+")  # noqa: SIM115 - closed below
        block = subprocess.Popen(
            ["bash", "-e", "-c", recipe],
            cwd=ROOT,
            env={**env, "FABRIC_NATS_URL": nats.url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = block.wait(timeout=180)
        finally:
            # What the recipe left running (`&`): the platform and the replicas.
            _stop_group(block.pid, signal.SIGTERM)
            log.seek(0)
            transcript = log.read()
            log.close()
    assert code == 0, f"README block failed:\n{recipe}\n--- output ---\n{transcript}"
    assert transcript.count(": SERVING") == 4  # the platform, then each replica
    assert re.search(r"^-- 1 row", transcript, re.M)  # the count, from a replica
    assert re.search(r"^-- 5 rows", transcript, re.M)  # the preview, through the platform
