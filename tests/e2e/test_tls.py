"""TLS and mutual TLS on the gateway, with real certificates, and the serve-time guard."""

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

from fabric.client import FabricClient
from fabric.errors import FabricError, InvalidArgument
from tests.e2e.conftest import make_shop, start_harness
from tests.support.certs import TestAuthority

QUERY = "SELECT COUNT(*) AS n FROM orders"


def test_tls_serves_clients_that_trust_the_ca(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    server = ca.issue_server()
    h = start_harness(tmp_path, tls_cert=str(server.cert), tls_key=str(server.key))
    try:
        with FabricClient(h.address, timeout=10, tls_ca=ca.ca.cert.read_bytes()) as client:
            assert client.query("shop", QUERY).column("n")[0].as_py() == 20_000
        with FabricClient(h.address, timeout=5) as plaintext, pytest.raises(FabricError):
            plaintext.query("shop", QUERY)
        stranger = TestAuthority(tmp_path, name="Stranger CA")
        with (
            FabricClient(h.address, timeout=5, tls_ca=stranger.ca.cert.read_bytes()) as wrong,
            pytest.raises(FabricError),
        ):
            wrong.query("shop", QUERY)
    finally:
        h.gateway.stop()
        h.store.close()
    assert h.executed == [(h.executed[0][0], ())]  # only the trusted client reached DuckDB


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    server, client_cert = ca.issue_server(), ca.issue_client()
    h = start_harness(
        tmp_path, tls_cert=str(server.cert), tls_key=str(server.key), tls_client_ca=str(ca.ca.cert)
    )
    try:
        cert, key = client_cert.pem()
        with FabricClient(
            h.address, timeout=10, tls_ca=ca.ca.cert.read_bytes(), tls_cert=cert, tls_key=key
        ) as client:
            assert client.query("shop", QUERY).column("n")[0].as_py() == 20_000
        with (
            FabricClient(h.address, timeout=5, tls_ca=ca.ca.cert.read_bytes()) as anonymous,
            pytest.raises(FabricError),
        ):
            anonymous.query("shop", QUERY)
    finally:
        h.gateway.stop()
        h.store.close()
    assert len(h.executed) == 1


def test_serve_refuses_a_public_address_without_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fabric.api.server import is_loopback
    from fabric.cli import main

    assert is_loopback("127.0.0.1:50051") and is_loopback("[::1]:1") and is_loopback("localhost:9")
    assert not is_loopback("0.0.0.0:50051") and not is_loopback("[::]:1")
    assert not is_loopback("db.example.com:1")
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path))
    assert main(["serve", "--listen", "0.0.0.0:0"]) == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in capsys.readouterr().err


def test_half_a_tls_configuration_is_refused() -> None:
    from fabric.config import Settings

    with pytest.raises(InvalidArgument, match="both"):
        Settings.from_env({"FABRIC_TLS_CERT": "/x.crt"})
    with pytest.raises(InvalidArgument, match="mutual TLS"):
        Settings.from_env({"FABRIC_TLS_CLIENT_CA": "/ca.crt"})


# -- the CLI against a TLS gateway that is not on loopback -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _outside_address() -> str:
    """This machine's address on its network (no packet is sent), or loopback if it has
    none: the gateway listens on every interface either way."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
    return address


def _fabric(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[dict[str, str], TestAuthority, str]]:
    """`fabric serve` on 0.0.0.0 with mutual TLS, over a DuckDB connection; the CLI's
    environment (no client TLS in it), the CA, and the address to reach it at."""
    ca = TestAuthority(tmp_path)
    server = ca.issue_server()
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path / "home"),
        "FABRIC_METRICS_PORT": "0",
    }
    database = tmp_path / "shop.duckdb"
    make_shop(database)
    created = _fabric(
        env,
        "connection",
        "create",
        "shop",
        "--kind",
        "duckdb",
        "--set",
        f"path={database}",
        "--local",
    )
    assert created.returncode == 0, created.stderr
    assert _fabric(env, "catalog", "select", "shop", "orders", "--local").returncode == 0
    served = {
        **env,
        "FABRIC_LISTEN": f"0.0.0.0:{port}",
        "FABRIC_TLS_CERT": str(server.cert),
        "FABRIC_TLS_KEY": str(server.key),
        "FABRIC_TLS_CLIENT_CA": str(ca.ca.cert),
    }
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "serve"],
            env=served,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            credentials = grpc.ssl_channel_credentials(
                ca.ca.cert.read_bytes(), *reversed(ca.issue_client("probe").pem())
            )
            options = [("grpc.ssl_target_name_override", "localhost")]
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            yield env, ca, f"{_outside_address()}:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)


def test_cli_reaches_a_mutual_tls_gateway_off_loopback(
    tls_gateway: tuple[dict[str, str], TestAuthority, str],
) -> None:
    env, ca, address = tls_gateway
    client = ca.issue_client("cli")
    flags = [
        "--address",
        address,
        "--tls-ca",
        str(ca.ca.cert),
        "--tls-cert",
        str(client.cert),
        "--tls-key",
        str(client.key),
        "--tls-server-name",
        "localhost",
    ]
    queried = _fabric(env, "query", "shop", QUERY, "--format", "csv", *flags)
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout.splitlines() == ["n", "20000"]
    listed = _fabric(env, "connection", "list", *flags)
    assert listed.returncode == 0 and listed.stdout.startswith("shop\tduckdb"), listed.stderr

    # the same from the environment
    from_env = {
        **env,
        "FABRIC_LISTEN": address,
        "FABRIC_TLS_CA": str(ca.ca.cert),
        "FABRIC_TLS_CLIENT_CERT": str(client.cert),
        "FABRIC_TLS_CLIENT_KEY": str(client.key),
    }
    again = _fabric(
        from_env, "query", "shop", QUERY, "--format", "csv", "--tls-server-name", "localhost"
    )
    assert again.returncode == 0 and again.stdout.splitlines() == ["n", "20000"], again.stderr

    # without a client certificate, or without TLS at all: refused, and said how to fix
    anonymous = _fabric(env, "query", "shop", QUERY, *flags[:4], *flags[-2:])
    plaintext = _fabric(env, "query", "shop", QUERY, "--address", address)
    half = _fabric(env, "query", "shop", QUERY, *flags[:6])
    for refused in (anonymous, plaintext):
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "cannot reach the Fabric gateway at" in refused.stderr
        assert "--tls-ca" in refused.stderr
    assert half.returncode == 2 and "needs both --tls-cert and --tls-key" in half.stderr
