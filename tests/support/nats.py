"""NATS for tests: the shared server's URL, and private servers a test may stop and restart.

`nats_url()` is FABRIC_TEST_NATS_URL when set, else the local server at
127.0.0.1:4222 (with JetStream); when it does not answer the test is skipped, or fails
under CI=true (tests/support/servers.py). Tests never stop that shared server: a test
that restarts NATS starts its own with `private_nats_server(tmp_path)`, on a free port,
JetStream file storage in its tmp dir, killed in `finally` whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.servers import _in_ci, require_server

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_SERVER_ENV = "FABRIC_TEST_NATS_SERVER"
"""Path of the nats-server binary for private servers (else PATH, else /usr/sbin)."""

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_READY = "Server is ready"

T = TypeVar("T")


def nats_url() -> str:
    """URL of the shared NATS server (skips, or fails under CI=true, when none answers)."""
    url = os.environ.get("FABRIC_TEST_NATS_URL", DEFAULT_NATS_URL)
    return require_server(url, 4222, "NATS")


def run_bounded(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run an async test body on a fresh event loop, failing it after `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def nats_server_binary() -> str:
    """The nats-server binary; skipped (failed under CI=true) when there is none."""
    candidates = [
        os.environ.get(NATS_SERVER_ENV),
        shutil.which("nats-server"),
        "/usr/sbin/nats-server",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = "the nats-server binary was not found (set FABRIC_TEST_NATS_SERVER)"
    if _in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


class NatsServerProcess:
    """A nats-server child process with JetStream; `port` stays the same across
    `restart`, and so does the store directory, so streams and durables survive."""

    def __init__(
        self,
        binary: str,
        store_dir: Path,
        *,
        jetstream: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.log_lines: list[str] = []

    @property
    def url(self) -> str:
        assert self.port is not None, "the server was never started"
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (on the previous port if there was one, else a free one) and return once
        the server logs that it is ready."""
        assert not self.running, "already running"
        port = str(self.port) if self.port is not None else "-1"
        args = [self.binary, "-a", "127.0.0.1", "-p", port, *self.extra_args]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        proc = self._proc

        def read_log() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # keep draining so the server never blocks on logging
                self.log_lines.append(line.rstrip())
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
                if _READY in line:
                    ready.set()
            ready.set()  # EOF: the process ended

        self._reader = threading.Thread(target=read_log, name="nats-server-log", daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or not self.running or self.port is None:
            self.kill()
            tail = "\n".join(self.log_lines[-10:])
            raise RuntimeError(f"nats-server did not become ready:\n{tail}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, JetStream flushed), killing it after a bound."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        self._reap()

    def kill(self) -> None:
        """Kill at once (SIGKILL) if running; always safe to call."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
            self._reader = None
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def private_nats_server(
    tmp_path: Path,
    *,
    jetstream: bool = True,
    config: str | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[NatsServerProcess]:
    """A nats-server of the test's own, JetStream stored under `tmp_path` (unless
    `jetstream=False`), with an optional config file text; it is killed when the block
    ends, however it ends."""
    store = tmp_path / "nats-store"
    store.mkdir(parents=True, exist_ok=True)
    args = list(extra_args)
    if config is not None:
        conf = tmp_path / "nats.conf"
        conf.write_text(config)
        args += ["-c", str(conf)]
    server = NatsServerProcess(nats_server_binary(), store, jetstream=jetstream, extra_args=args)
    try:
        server.start()
        yield server
    finally:
        server.kill()
