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
from collections.abc import Iterator, Sequence
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
    options: Sequence[str] = (),
    log: Path | None = None,
) -> Iterator[PgInstance]:
    """The server, with `options` (`name=value` settings) and its log (its standard error)
    written to `log` when given: with `log_statement=all`, the statements it ran."""
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
    log_file = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed in finally
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    user,
                    "--auth=scram-sha-256",
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
                    *(arg for option in options for arg in ("-c", option)),
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if log_file is None else log_file,
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
