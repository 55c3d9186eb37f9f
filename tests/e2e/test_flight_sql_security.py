"""The Flight SQL door's identity and transport: the gateway's tokens (a bad, an expired
and another tenant's), TLS and mutual TLS from the gateway's own settings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import grpc
import pytest

from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier, mint_token
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.flight_clients import connect, grpc_code, message_of
from tests.support.certs import TestAuthority

QUERY = "SELECT COUNT(*) AS n FROM orders"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Harness, TokenConfig]]:
    config = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "token.key"))
    h = start_harness(tmp_path, verifier=TokenVerifier(config), flight=True)
    try:
        yield h, config
    finally:
        h.gateway.stop()
        h.store.close()


def token(config: TokenConfig, *, tenant: str = "default", issued_ago: float = 0) -> str:
    return mint_token(
        config,
        tenant=tenant,
        stage="development",
        role="app",
        subject="tester",
        ttl=300,
        now=time.time() - issued_ago,
    )


def test_invalid_tokens_are_unauthenticated_before_any_source_is_touched(
    secured: tuple[Harness, TokenConfig], tmp_path: Path
) -> None:
    h, config = secured
    forged = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "forged.key"))
    bad_tokens = {
        "none": None,
        "garbage": "not-a-jwt",
        "forged": token(forged),
        "expired": token(config, issued_ago=3600),
        "tampered": token(config)[:-3] + "abc",
    }
    for why, bad in bad_tokens.items():
        with connect(h.gateway.flight_uri, token=bad) as conn, conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as caught:
                cur.execute(QUERY)
            assert grpc_code(caught.value) == grpc.StatusCode.UNAUTHENTICATED, why
            if bad:
                assert bad not in str(caught.value)
            with pytest.raises(adbc_driver_manager.Error) as listing:
                conn.adbc_get_objects(depth="catalogs").read_all()
            assert grpc_code(listing.value) == grpc.StatusCode.UNAUTHENTICATED, why
    assert h.executed == []
    assert h.engine.sources._bound == {}  # no connector, no pool was even built


def test_a_token_reaches_only_its_tenants_connections(
    secured: tuple[Harness, TokenConfig],
) -> None:
    h, config = secured
    with connect(h.gateway.flight_uri, connection="b_only", token=token(config)) as conn:
        with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error) as theirs:
            cur.execute(QUERY)
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
    assert grpc_code(theirs.value) == grpc.StatusCode.NOT_FOUND
    assert "b_only" in message_of(theirs.value)
    assert [c["catalog_name"] for c in catalogs] == ["shop"]
    other = token(config, tenant="other")
    with (
        connect(h.gateway.flight_uri, connection="b_only", token=other) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(QUERY)
        assert cur.fetchall() == [(20_000,)]
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
    assert [c["catalog_name"] for c in catalogs] == ["b_only", "shop"]


def test_a_started_result_is_the_callers_own(secured: tuple[Harness, TokenConfig]) -> None:
    """Another tenant holding the ticket gets NOT_FOUND, as for an unknown one."""
    import pyarrow as pa

    from fabric.v1 import flight_sql_pb2 as sql
    from tests.e2e.flight_clients import FlightClient

    h, config = secured
    mine = {"authorization": f"Bearer {token(config)}", "x-fabric-connection": "shop"}
    theirs = {"authorization": f"Bearer {token(config, tenant='other')}"}
    with (
        FlightClient(h.gateway.flight_uri, mine) as me,
        FlightClient(h.gateway.flight_uri, theirs) as stranger,
    ):
        info = me.info(sql.CommandStatementQuery(query=QUERY))
        with pytest.raises(pa.ArrowKeyError, match="statement not found"):
            stranger.client.do_get(info.endpoints[0].ticket, stranger.options).read_all()
        assert me.client.do_get(info.endpoints[0].ticket, me.options).read_all().num_rows == 1


def test_tls_and_mutual_tls_come_from_the_gateway_settings(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    server, client_cert = ca.issue_server(), ca.issue_client()
    h = start_harness(
        tmp_path,
        flight=True,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(ca.ca.cert),
    )
    tls_uri = f"grpc+tls://127.0.0.1:{h.gateway.gateway.flight_port}"
    trusted = {"adbc.flight.sql.client_option.tls_root_certs": ca.ca.cert.read_text()}
    cert, key = client_cert.pem()
    mutual = {
        **trusted,
        "adbc.flight.sql.client_option.mtls_cert_chain": cert.decode(),
        "adbc.flight.sql.client_option.mtls_private_key": key.decode(),
    }
    try:
        with connect(tls_uri, options=mutual) as conn, conn.cursor() as cur:
            cur.execute(QUERY)
            assert cur.fetchall() == [(20_000,)]
        for options in (trusted, {}):  # no client certificate; or not trusting the CA
            with (
                pytest.raises(adbc_driver_manager.Error),
                connect(tls_uri, options=options) as conn,
                conn.cursor() as cur,
            ):
                cur.execute(QUERY)
        with (
            pytest.raises(adbc_driver_manager.Error),
            connect(h.gateway.flight_uri) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(QUERY)  # plaintext to a TLS port
    finally:
        h.gateway.stop()
        h.store.close()
    assert len(h.executed) == 1  # only the client with a certificate reached DuckDB
