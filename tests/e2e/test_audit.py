"""The audit trail says who did what, so it can be reviewed: the token's principal as
the actor, the settings a connection update changed (before and after), whether a
password was set or cleared (never the password), and the attempts that were refused
(a caller without the role, a change against a version someone else changed first)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fabric.security.tokens import TokenConfig, mint_token
from fabric.v1 import platform_pb2 as pb
from fabric.v1 import platform_pb2_grpc as pb_grpc
from tests.e2e.conftest import Harness
from tests.e2e.test_platform_api import (
    PASSWORD,
    Platform,
    create_shop,
    make_source,
    rpc_error,
    stage_config,
    start_platform,
    stop_platform,
)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    make_source(tmp_path / "shop.duckdb")
    running = start_platform(tmp_path)
    try:
        yield running
    finally:
        stop_platform(running)


def events(p: Platform, action: str) -> list[dict[str, str]]:
    found = p.call(p.connections.ListAudit, pb.ListAuditRequest(connection="shop")).events
    return [dict(e.details, actor=e.actor, stage=e.stage) for e in found if e.action == action]


def test_an_update_records_settings_before_and_after_and_passwords_never(
    platform: Platform,
) -> None:
    p = platform
    path = str(p.home / "shop.duckdb")
    create_shop(p)
    # Production gets its own database file and a password; then development's password
    # is cleared (the all-stages one), and production's file is re-pointed.
    p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(
            name="shop", stages=[stage_config("production", "Prod-" + PASSWORD, path=path)]
        ),
        principal="carol@example.com",
    )
    p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(name="shop", clear_password_stages=["*"]),
        principal="dave@example.com",
    )
    p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(
            name="shop", stages=[stage_config("production", path=path + ".v2")]
        ),
        principal="erin@example.com",
    )
    repoint, cleared, added = events(p, "connection.update")  # newest first
    assert added["actor"] == "carol@example.com"
    assert json.loads(added["settings_before"]) == {}
    assert json.loads(added["settings_after"]) == {"production": {"path": path}}
    assert (added["password_set"], added["password_cleared"]) == ("production", "")
    assert cleared["actor"] == "dave@example.com"
    assert (cleared["password_set"], cleared["password_cleared"]) == ("", "*")
    assert cleared["stages_changed"] == "" and cleared["settings_after"] == "{}"
    assert repoint["actor"] == "erin@example.com" and repoint["stage"] == "production"
    assert json.loads(repoint["settings_before"]) == {"production": {"path": path}}
    assert json.loads(repoint["settings_after"]) == {"production": {"path": path + ".v2"}}
    # The production password was kept: neither set nor cleared by a settings change.
    assert (repoint["password_set"], repoint["password_cleared"]) == ("", "")
    for details in (repoint, cleared, added):
        assert all(PASSWORD not in value for value in details.values())


def test_a_version_conflict_is_a_refused_attempt_on_the_trail(platform: Platform) -> None:
    p = platform
    created = create_shop(p)
    before = p.store.list_connections("default")
    error = rpc_error(
        p.connections.DeleteConnection,
        pb.DeleteConnectionRequest(name="shop", expected_version=created.version + 5),
        metadata=[("x-principal", "mallory@example.com")],
        timeout=30,
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert p.store.list_connections("default") == before  # nothing changed
    [refused] = events(p, "connection.delete.refused")
    assert refused["actor"] == "mallory@example.com"
    assert refused["reason"] == "version_conflict"


def test_a_caller_without_the_role_is_refused_and_recorded(
    secured: tuple[Harness, TokenConfig],
) -> None:
    h, config = secured
    app_token = mint_token(
        config,
        tenant="default",
        stage="production",
        role="app",
        subject="intruder@example.com",
        ttl=300,
        now=time.time(),
    )
    with grpc.insecure_channel(h.address) as channel:
        connections = pb_grpc.ConnectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            connections.DeleteConnection(
                pb.DeleteConnectionRequest(name="shop"),
                metadata=[("authorization", f"Bearer {app_token}")],
                timeout=30,
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert h.store.get_connection("default", "shop").name == "shop"  # still there
    [refused] = [e for e in h.store.list_audit("default") if e.action == "call.refused"]
    assert (refused.actor, refused.stage) == ("intruder@example.com", "production")
    assert dict(refused.details) == {
        "reason": "permission_denied",
        "method": "/fabric.v1.ConnectionService/DeleteConnection",
        "role": "app",
    }
    assert h.executed == []
