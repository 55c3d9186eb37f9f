"""A private PostgreSQL server for tests that need password auth, or to stop a server.

It runs from the installed binaries on a free port in a temporary directory, as the
`postgres` system user when the tests run as root (PostgreSQL refuses to run as root),
and is always stopped by the context manager; the machine's shared server is never
touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import _in_ci


def _bin_dir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.glob("*/bin/initdb"), reverse=True) if root.exists() else []
    found = shutil.which("initdb")
    return versions[0].parent if versions else (Path(found).parent if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgInstance:
    port: int
    user: str
    password: str

    def url(self, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/postgres"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


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
    port = _free_port()
    server: subprocess.Popen[bytes] | None = None
    log_file = None
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
        extra = [
            arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")
        ]
        extra += [arg for option in options for arg in ("-c", option)]
        log_file = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            _as_postgres(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    *extra,
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=log_file if log_file is not None else subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                timeout=10,
            ).returncode
            != 0
        ):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private PostgreSQL server did not start")
            time.sleep(0.05)  # polling readiness with a deadline, not a fixed wait
        yield PgInstance(port, user, password)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        if log_file is not None:
            log_file.close()
        shutil.rmtree(base, ignore_errors=True)
