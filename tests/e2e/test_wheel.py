"""What the container image does, without Docker (no daemon can run here): build the
gateway's wheel from the files the Dockerfile copies, install it in a fresh virtual
environment, and run the image's entry points from there."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("pyproject.toml", "README.md", "fabric", "connectors")  # the Dockerfile's COPY lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the gateway installed from its wheel."""
    work = tmp_path_factory.mktemp("image")
    source = work / "src"
    source.mkdir()
    for name in COPIED:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "."],
        cwd=source,
        check=True,
        timeout=300,
    )
    [wheel] = wheels.glob("fabric_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fabric/py.typed" in names and "connectors/postgres/connector.py" in names
    # The portal's page and modules ship in the package (it is served offline from there).
    assert {"fabric/api/http/static/index.html", "fabric/api/http/static/js/main.js"} <= set(names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=600
    )
    return env_dir / "bin" / "fabric"


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "VIRTUAL_"))}
    return {**environ, "FABRIC_HOME": str(home), **extra}


def test_the_installed_entry_point_checks_its_configuration(
    installed: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(installed), "serve", "--check"],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree: the installed package must stand alone
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "ready to serve"


def test_the_installed_gateway_serves_and_reports_health(installed: Path, tmp_path: Path) -> None:
    port, health_port = _free_port(), _free_port()
    # as the image runs it: health also on a plain address of its own, for probes
    env = _clean_env(
        tmp_path, FABRIC_METRICS_PORT="0", FABRIC_HEALTH_LISTEN=f"127.0.0.1:{health_port}"
    )
    with subprocess.Popen(
        [str(installed), "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            ready = server.stdout.readline()  # the process prints one line when it serves
            assert f"port {port}" in ready, ready
            for address in (f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"):
                health = subprocess.run(
                    [str(installed), "health", "--address", address],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert health.returncode == 0, health.stdout + health.stderr
                assert health.stdout.strip() == f"{address}: SERVING"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                assert server.wait(timeout=30) == 0
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait(timeout=10)
