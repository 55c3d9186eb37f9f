"""A terminal session of `fabric sql` driven through a pseudo-terminal (pexpect): a query,
history recall, completion of a column name, a long query with its progress line, and
Ctrl-C cancelling that query at the source (PostgreSQL's pg_stat_activity no longer
shows it)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pexpect
import psycopg
import pytest

FABRIC = [sys.executable, "-m", "fabric.cli"]
LONG_QUERY = "SELECT COUNT(*) AS n FROM people a CROSS JOIN people b CROSS JOIN people c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"fabric_shell_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(
            f"CREATE TABLE {name}.people (id int PRIMARY KEY, name text, country_code text)"
        )
        conn.execute(
            f"INSERT INTO {name}.people SELECT i, 'person ' || i, "
            "(ARRAY['FR', 'DE', 'JP'])[1 + i % 3] FROM generate_series(1, 3000) i"
        )
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def shell_env(tmp_path: Path, postgres_url: str, schema: str) -> Iterator[dict[str, str]]:
    """A gateway (`fabric serve`) over a PostgreSQL connection `pg` selecting `people`."""
    from urllib.parse import urlparse

    url = urlparse(postgres_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path / "home"),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": "0",
        # The streamed cross join must outlast any machine: no row cap of the gateway's.
        "FABRIC_MAX_ROWS": str(10**12),
        "PAGER": "",
        "TERM": "xterm",
    }
    setup = [
        [
            "connection",
            "create",
            "pg",
            "--kind",
            "postgres",
            "--set",
            f"host={url.hostname}",
            "--set",
            f"port={url.port or 5432}",
            "--set",
            f"database={url.path.lstrip('/')}",
            "--set",
            f"user={url.username}",
            "--local",
        ],
        ["catalog", "select", "pg", f"{schema}.people", "--local"],
    ]
    for args in setup:
        done = subprocess.run(
            [*FABRIC, *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen([*FABRIC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT) as p,
    ):
        try:
            with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            yield env
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)


def _running(postgres_url: str) -> int:
    """Backends running our cross join: active, or between two fetches of its rows."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state IN ('active', 'idle in transaction') "
            "AND query LIKE '%CROSS JOIN%people%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _until(predicate: object, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)  # polling with a deadline
    return False


def test_a_terminal_session_of_the_shell(
    shell_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    shell = pexpect.spawn(
        FABRIC[0],
        [*FABRIC[1:], "sql", "pg", "--history", str(history)],
        env=shell_env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 150),
    )
    try:
        shell.expect("statements end with ';'")
        shell.expect("pg=>")

        # a query, typed over two lines: the statement runs at its ';'
        shell.send("SELECT country_code, COUNT(*) AS n FROM people\r")
        shell.send("GROUP BY country_code ORDER BY country_code;\r")
        shell.expect(r"DE\s+\|\s+1000")
        shell.expect(r"-- 3 rows, [\d.]+ ms in the gateway")
        shell.expect("pg=>")

        # history: Up brings the statement back, Enter runs it again
        shell.send("\x1b[A")
        shell.expect("ORDER BY country_code;")
        shell.send("\r")
        shell.expect(r"-- 3 rows")
        shell.expect("pg=>")
        assert "GROUP BY country_code ORDER BY country_code;" in history.read_text()

        # completion: Tab completes a column name of the selection
        shell.send("SELECT DISTINCT countr")
        shell.send("\t")
        shell.expect("country_code")
        shell.send(" FROM people WHERE id = 3;\r")
        shell.expect(r"country_code\s*\r\n-+\r\n\s*FR")
        shell.expect("-- 1 row,")
        shell.expect("pg=>")

        # a long query: the progress line counts time while it runs at the source
        shell.send(LONG_QUERY + ";\r")
        shell.expect(r"-- running: 0 rows received, \d+\.\d s")
        assert _until(lambda: _running(postgres_url) == 1), "the query never ran at the source"
        # Ctrl-C cancels it, at the source too, and the shell goes on
        shell.sendintr()
        shell.expect("-- cancelled")
        shell.expect("pg=>")
        assert _until(lambda: _running(postgres_url) == 0), "the query still runs at the source"

        shell.send("\\q\r")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0


def _query(env: dict[str, str], *args: str) -> list[str]:
    return [*FABRIC, "query", "pg", *args]


def test_rows_are_printed_as_they_arrive_and_ctrl_c_cancels_at_the_source(
    shell_env: dict[str, str], postgres_url: str
) -> None:
    """Piped output: the first rows come out while the source still runs the query (the
    CLI streams, it does not wait for the whole result), and no progress line."""
    with subprocess.Popen(
        _query(
            shell_env,
            "SELECT a.id FROM people a CROSS JOIN people b CROSS JOIN people c",
            "--format",
            "csv",
        ),
        env=shell_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        assert cli.stdout is not None and cli.stderr is not None
        assert cli.stdout.readline() == "id\n"
        assert cli.stdout.readline().strip().isdigit()
        assert _running(postgres_url) == 1  # still running there: nothing was buffered
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 130
        errors = cli.stderr.read()
    assert "interrupted" in errors and "running:" not in errors and "Traceback" not in errors
    assert _until(lambda: _running(postgres_url) == 0), "the query still runs at the source"


def test_a_terminal_shows_at_most_its_row_cap_and_says_so(shell_env: dict[str, str]) -> None:
    sql = "SELECT id, name FROM people ORDER BY id"
    shown = pexpect.spawn(
        FABRIC[0],
        [*FABRIC[1:], "query", "pg", sql, "--terminal-rows", "5"],
        env=shell_env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 150),
    )
    shown.expect(pexpect.EOF)
    shown.close()
    text = shown.before or ""
    assert shown.exitstatus == 0, text
    rows = [line for line in text.splitlines() if line.startswith(" ") and "|" in line]
    assert [r.split("|")[0].strip() for r in rows] == ["id", "1", "2", "3", "4", "5"]
    assert "-- showing the first 5 rows; there are more" in text
    assert "--terminal-rows 0 shows all" in text
    piped = subprocess.run(
        _query(shell_env, sql, "--terminal-rows", "5", "--format", "csv"),
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 3001  # never cut


def test_a_result_taller_than_the_terminal_goes_through_the_pager(
    shell_env: dict[str, str], tmp_path: Path
) -> None:
    paged = tmp_path / "paged.txt"
    env = {**shell_env, "PAGER": f"cat > {paged}"}
    short = pexpect.spawn(
        FABRIC[0],
        [*FABRIC[1:], "query", "pg", "SELECT id FROM people WHERE id <= 3 ORDER BY id"],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 150),
    )
    short.expect(pexpect.EOF)
    short.close()
    assert not paged.exists() and " 3" in (short.before or "")  # fits: no pager
    tall = pexpect.spawn(
        FABRIC[0],
        [*FABRIC[1:], "query", "pg", "SELECT id FROM people WHERE id <= 100 ORDER BY id"],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 150),
    )
    tall.expect(pexpect.EOF)
    tall.close()
    assert tall.exitstatus == 0
    lines = paged.read_text().splitlines()
    assert lines[0].strip() == "id" and [line.strip() for line in lines[2:]] == [
        str(i) for i in range(1, 101)
    ]
    assert " 57\r\n" not in (tall.before or "")  # the rows went to the pager only
    assert "-- 100 rows" in (tall.before or "")


def test_leading_zeros_stay_text_and_a_type_that_does_not_fit_points_to_name_type(
    shell_env: dict[str, str],
) -> None:
    def query(*params: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _query(
                shell_env,
                "SELECT id FROM people WHERE country_code = :c OR name = :n ORDER BY id LIMIT 1",
                *params,
                "--format",
                "csv",
            ),
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    kept = query("-p", "c=007", "-p", "n=person 2")  # '007' is text, as typed
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines() == ["id", "2"]
    mismatched = query("-p", "c=5", "-p", "n=person 2")  # 5 is inferred as an integer
    assert mismatched.returncode == 2 and "Traceback" not in mismatched.stderr
    assert "SQLSTATE 42883" in mismatched.stderr
    assert "Parameter(s) c, n had their type inferred" in mismatched.stderr
    assert "-p NAME:TYPE=VALUE" in mismatched.stderr
    typed = query("-p", "c:str=5", "-p", "n=person 2")
    assert typed.returncode == 0 and typed.stdout.splitlines() == ["id", "2"], typed.stderr
