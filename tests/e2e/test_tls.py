"""TLS and mutual TLS on the gateway, with real certificates, and the serve-time guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.client import FabricClient
from fabric.errors import FabricError, InvalidArgument
from tests.e2e.conftest import start_harness
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
