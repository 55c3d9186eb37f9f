"""A private PostgreSQL server for tests that need password auth, or to stop a server.

It runs from the installed binaries on a free port in a temporary directory, as the
`postgres` system user when the tests run as root (PostgreSQL refuses to run as root),
and is always stopped by the context manager; the machine's shared server is never
touched. A test may `restart` it (same port, same data) or `freeze` it (SIGSTOP of the
postmaster and every backend: it accepts connections in the kernel and answers nothing)
until `thaw`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.servers import _in_ci

START_TIMEOUT = 60.0


def _bin_dir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.glob("*/bin/initdb"), reverse=True) if root.exists() else []
    found = shutil.which("initdb")
    return versions[0].parent if versions else (Path(found).parent if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found.extend(int(p) for p in (task / "children").read_text().split())
    return found


@dataclass
class PgInstance:
    port: int
    user: str
    password: str
    bin_dir: Path = field(repr=False, default=Path("."))
    data: Path = field(repr=False, default=Path("."))
    sockets: Path = field(repr=False, default=Path("."))
    server: subprocess.Popen[bytes] | None = field(repr=False, default=None)
    frozen: list[int] = field(repr=False, default_factory=list)
    extra: list[str] = field(repr=False, default_factory=list)
    """Further server arguments (`-c name=value` pairs)."""
    log: Path | None = field(repr=False, default=None)
    """Where the server's log goes (appended across restarts); None: nowhere."""

    def url(self, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (on its port and data directory) and wait until it answers."""
        log_file = open(self.log, "ab") if self.log is not None else None  # noqa: SIM115
        self.server = subprocess.Popen(
            _as_postgres(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    *self.extra,
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=log_file if log_file is not None else subprocess.DEVNULL,
        )
        if log_file is not None:
            log_file.close()  # the server holds its own descriptor
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private PostgreSQL server did not start")
            time.sleep(0.05)  # polling readiness with a deadline, not a fixed wait

    def ready(self) -> bool:
        probe = [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and wait for it."""
        self.thaw()
        server, self.server = self.server, None
        if server is None:
            return
        with suppress(ProcessLookupError):
            os.kill(_postmaster(server.pid), signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server and every process under it: connections are still accepted
        by the kernel, and nothing answers."""
        assert self.server is not None
        postmaster = _postmaster(self.server.pid)
        pids = [postmaster, *_children(postmaster)]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.frozen = pids

    def thaw(self) -> None:
        pids, self.frozen = self.frozen, []
        if pids and self.server is not None:
            # `runuser` stops itself when the process it watches stops (job control):
            # it must go on too, or it never reaps the server when it is stopped.
            pids.append(self.server.pid)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _postmaster(pid: int) -> int:
    """The postmaster's pid: `pid` itself, or its child when `runuser` started it."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return pid
    if name == "runuser":
        children = _children(pid)
        if children:
            return children[0]
    return pid


@contextmanager
def private_postgres(
    password: str,
    user: str = "fabric_admin",
    *,
    settings: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
    log: Path | None = None,
    auth: str = "scram-sha-256",
) -> Iterator[PgInstance]:
    """A server of its own; `settings` (or `options`, `name=value` strings) are passed as
    `-c name=value` (`log_statement=all` to see every statement that reached it), its log
    goes to `log` when given, and `auth` is how clients authenticate (`trust`: no
    password)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (initdb) are not installed"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="fabric-pg-"))
    data, sockets, pwfile = base / "data", base / "sock", base / "pw"
    sockets.mkdir()
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        shutil.chown(pwfile, "postgres")
    extra = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
    extra += [arg for option in options for arg in ("-c", option)]
    instance = PgInstance(
        _free_port(), user, password, bin_dir, data, sockets, extra=extra, log=log
    )
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    user,
                    f"--auth={auth}",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        pwfile.unlink()
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)
