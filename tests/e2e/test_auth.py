"""Every call carries a verified token; tenant, stage and role come only from its claims."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fabric.client import FabricClient
from fabric.errors import NotFound, PermissionDenied, Unauthenticated
from fabric.security.tokens import LocalKey, TokenConfig, mint_token
from tests.e2e.conftest import Harness

QUERY = "SELECT COUNT(*) AS n FROM orders"


def token(
    config: TokenConfig,
    *,
    role: str = "app",
    tenant: str = "default",
    stage: str = "development",
    issued_ago: float = 0,
) -> str:
    return mint_token(
        config,
        tenant=tenant,
        stage=stage,
        role=role,
        subject="tester",
        ttl=300,
        now=time.time() - issued_ago,
    )


def test_calls_without_a_valid_token_never_reach_a_source(
    secured: tuple[Harness, TokenConfig], tmp_path: Path
) -> None:
    h, config = secured
    forged = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "forged.key"))
    bad_tokens = [
        None,
        "not-a-jwt",
        token(forged),
        token(config, issued_ago=3600),
        token(config)[:-3] + "abc",
    ]
    for bad in bad_tokens:
        with FabricClient(h.address, bad, timeout=10) as client:
            with pytest.raises(Unauthenticated) as caught:
                client.query("shop", QUERY)
            if bad:
                assert bad not in caught.value.message
            with pytest.raises(Unauthenticated):
                client.open_statement("shop", QUERY)
    assert h.executed == []
    assert h.engine.sources._bound == {}  # no connector, no pool was even built


def test_roles_decide_the_methods(secured: tuple[Harness, TokenConfig]) -> None:
    h, config = secured
    with FabricClient(h.address, token(config, role="app"), timeout=10) as app:
        assert app.query("shop", QUERY).column("n")[0].as_py() == 20_000
        with pytest.raises(PermissionDenied):
            app.preview("shop", "orders")
    with FabricClient(h.address, token(config, role="developer"), timeout=10) as developer:
        assert developer.preview("shop", "orders", limit=2).num_rows == 2


def test_a_tenant_cannot_see_another_tenants_connections(
    secured: tuple[Harness, TokenConfig],
) -> None:
    h, config = secured
    with FabricClient(h.address, token(config), timeout=10) as client:
        with pytest.raises(NotFound) as theirs:
            client.query("b_only", QUERY)
        with pytest.raises(NotFound) as nobodys:
            client.query("no_such_connection", QUERY)
    assert theirs.value.message.replace("b_only", "X") == nobodys.value.message.replace(
        "no_such_connection", "X"
    )
    with FabricClient(h.address, token(config, tenant="other"), timeout=10) as other:
        assert other.query("b_only", QUERY).column("n")[0].as_py() == 20_000


def test_a_stage_token_reaches_only_its_stage(secured: tuple[Harness, TokenConfig]) -> None:
    h, config = secured
    with (
        FabricClient(h.address, token(config, stage="development"), timeout=10) as dev,
        pytest.raises(NotFound, match="stage 'development'"),
    ):
        dev.query("prod_only", QUERY)
    with FabricClient(h.address, token(config, stage="production"), timeout=10) as prod:
        assert prod.query("prod_only", QUERY).column("n")[0].as_py() == 20_000
    assert [sql for sql, _ in h.executed] and all("orders" in sql for sql, _ in h.executed)


def test_concurrent_calls_each_see_their_own_identity(secured: tuple[Harness, TokenConfig]) -> None:
    """The interceptor hands the identity to the handler through the call's own task:
    calls of two tenants interleaved on many threads never see each other's."""
    h, config = secured
    mine, theirs = token(config), token(config, tenant="other")
    outcomes: list[str] = []

    def work(tok: str, expect_visible: bool) -> None:
        with FabricClient(h.address, tok, timeout=10) as client:
            for _ in range(15):
                try:
                    client.query("b_only", QUERY)
                    outcomes.append("ok" if expect_visible else "LEAKED")
                except NotFound:
                    outcomes.append("ok" if not expect_visible else "HIDDEN")

    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(work, tok, visible) for tok, visible in [(mine, False), (theirs, True)] * 4
        ]
        for future in futures:
            future.result()
    assert outcomes == ["ok"] * 120
