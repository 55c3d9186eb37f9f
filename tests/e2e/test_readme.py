"""The README's walk-through ("Using it") runs as written: every `sh` block in order in a
shell of its own on a terminal (the password prompt is answered, as a person would), the
block that starts the gateway in the background, the Python block with the venv's
Python. Against PostgreSQL at 127.0.0.1:5432, as the README says; only FABRIC_HOME and
the ports are the test's own, so nothing here touches a developer's setup."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pexpect
import psycopg
import pytest

from tests.support.servers import _in_ci

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)


def walkthrough() -> list[tuple[str, str]]:
    """The (language, text) of each code block of the README's "Using it" section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Using it\n")
    end = readme.index("\n## ", start + 1)
    return [(m[1], m[2]) for m in BLOCK.finditer(readme[start:end])]


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


@pytest.fixture
def gateway_block(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The block that runs `fabric serve`, in the background (the README's first
    terminal); stopped with Ctrl-C (SIGINT) at the end, as the README says."""
    (serve,) = [text for lang, text in walkthrough() if re.search(r"^fabric serve\b", text, re.M)]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["bash", "-e", "-c", serve],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.close()


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


def test_the_readme_walkthrough_runs_as_written(
    env: dict[str, str], gateway_block: subprocess.Popen[bytes]
) -> None:
    blocks = walkthrough()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sh", "python"]
    outputs = []
    for lang, text in blocks:
        if re.search(r"^fabric serve\b", text, re.M):
            continue
        if lang == "sh":
            outputs.append(_run_on_a_terminal(text, env))
        else:
            done = subprocess.run(
                [sys.executable, "-c", text],
                cwd=ROOT,
                env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
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
