"""Mistakes people make with the `fabric` command end with a message that says what to
do, exit status 2, and never a Python traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fabric.terminal.arguments import UsageError, parse_param

FABRIC = [sys.executable, "-m", "fabric.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": "0",
    }


def _run(
    env: dict[str, str], *args: str, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FABRIC, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
    )


def _refused(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("setting", "suggested"),
    [("hostname=db.example.com", "--set host=..."), ("db=sales", "--set database=...")],
)
def test_a_misspelled_setting_names_the_nearest_declared_one(
    env: dict[str, str], setting: str, suggested: str
) -> None:
    done = _run(env, "connection", "create", "s", "--kind", "postgres", "--set", setting)
    _refused(done, f"Did you mean {suggested}?", "Known settings: host, port, user")


def test_a_setting_of_the_wrong_type_says_which_type(env: dict[str, str]) -> None:
    done = _run(env, "connection", "create", "s", "--kind", "postgres", "--set", "port=5432x")
    _refused(done, "setting 'port' must be a whole number")


def test_create_without_a_required_setting_says_which(env: dict[str, str]) -> None:
    done = _run(env, "connection", "create", "s", "--kind", "postgres", "--set", "host=h")
    _refused(done, "--set user=...", "--set database=...", "--no-verify")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["preview", "shop", "orders", "--limit", "-5"], "argument --limit: must be 0 or more"),
        (["query", "shop", "SELECT 1", "--max-rows", "-1"], "argument --max-rows: must be 1 or"),
        (["query", "shop", "SELECT 1", "--max-rows", "0"], "argument --max-rows: must be 1 or"),
        (["query", "shop", "SELECT 1", "--cache-ttl", "-3"], "--cache-ttl: must be 0 or more"),
        (["query", "shop", "SELECT 1", "--timeout", "0"], "--timeout: must be a number above 0"),
        (["query", "shop", "SELECT 1", "-p", "n:integer=5"], "unknown type 'integer'"),
        (["query", "shop", "SELECT 1", "-p", "5=n"], "parameters are NAME=VALUE"),
        (["query", "shop", "SELECT 1", "-p", "d:date=soon"], "'d' is not a valid date"),
        (["query", "shop"], "no SQL: give it as an argument, with -f FILE"),
        (["query", "shop", "-f", "/nonexistent/q.sql"], "cannot read the SQL file"),
        (["audit", "list", "--limit", "0"], "argument --limit: must be 1 or more"),
        (["token", "--ttl", "-1"], "argument --ttl: must be a number above 0"),
    ],
)
def test_bad_values_are_usage_errors(env: dict[str, str], args: list[str], phrase: str) -> None:
    _refused(_run(env, *args), phrase)


def test_password_prompt_without_a_terminal_is_a_usage_error(env: dict[str, str]) -> None:
    done = _run(
        env,
        "connection",
        "create",
        "s",
        "--kind",
        "duckdb",
        "--set",
        "path=/tmp/x.duckdb",
        "--password-prompt",
        "--local",
    )
    _refused(done, "--password-prompt needs a terminal", "--password-stdin")


def test_no_gateway_names_fabric_serve_and_the_address(env: dict[str, str]) -> None:
    address = env["FABRIC_LISTEN"]
    done = _run(env, "query", "shop", "SELECT 1")
    _refused(done, f"cannot reach the Fabric gateway at {address}", "fabric serve", address)
    admin = _run(env, "connection", "list")
    _refused(admin, "fabric serve", "--local")


@pytest.fixture
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [*FABRIC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
            log.close()


def test_a_second_gateway_on_a_port_in_use_refuses_to_start(
    env: dict[str, str], serving: subprocess.Popen[str]
) -> None:
    second = _run(env, "serve")
    _refused(second, f"cannot listen on {env['FABRIC_LISTEN']}: the address is in use")
    assert serving.poll() is None  # the first one still runs
    listed = _run(env, "connection", "list")
    assert listed.returncode == 0, listed.stderr


def test_a_metrics_port_in_use_is_said_so(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run({**env, "FABRIC_METRICS_PORT": str(port)}, "serve")
    _refused(done, f"cannot serve metrics on 127.0.0.1:{port}", "FABRIC_METRICS_PORT")
    assert "source_unavailable" not in done.stderr


def test_version_and_help_for_every_option(env: dict[str, str]) -> None:
    from fabric import __version__
    from fabric.cli import build_parser

    version = _run(env, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fabric {__version__}"
    missing = []

    def walk(parser: object, path: str) -> None:
        for action in parser._actions:  # type: ignore[attr-defined]
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif action.option_strings and not action.help:
                missing.append(f"{path} {action.option_strings[0]}")

    walk(build_parser(), "fabric")
    assert missing == []


def test_typed_parameters_lose_nothing_that_was_typed() -> None:
    assert parse_param("n=007") == ("n", "007")
    assert parse_param("n=+5") == ("n", "+5")
    assert parse_param("n=1.50") == ("n", "1.50")
    assert parse_param("n=1e3") == ("n", "1e3")
    assert parse_param("n=12345678901234567890123") == ("n", "12345678901234567890123")
    assert parse_param("n=-0") == ("n", "-0")
    assert parse_param("n=42") == ("n", 42)
    assert parse_param("n=-7") == ("n", -7)
    assert parse_param("n=2.5") == ("n", 2.5)
    assert parse_param("n=true") == ("n", True)
    assert parse_param("n:int=007") == ("n", 7)
    with pytest.raises(UsageError, match="'n' is not a valid int"):
        parse_param("n:int=seven")
