"""Vault down, sealed or refusing: every call is UNAVAILABLE and nothing falls back.

The peers are real: a closed local port, a local HTTP server speaking Vault's error
format (`{"errors": ["Vault is sealed"]}` with 503, and other statuses), and a socket
that accepts and never answers. hvac and requests run unmodified against them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fabric.api.status import status_for
from fabric.errors import FabricError, IntegrityError, NotFound, SourceUnavailable
from fabric.security.envelope import EnvelopeContext, seal
from fabric.security.vault import VaultKvSecretStore, VaultTransitKms, vault_client
from tests.support.vault import closed_port_url, failing_vault, silent_vault

CANARY_SECRET = "canary-secret-Pz3!"
CANARY_TOKEN = "hvs.canary-token-Q9"
CTX = {"tenant": "acme", "purpose": "secret", "subject": "acme/db"}
# A syntactically valid transit ciphertext, so the call reaches the peer.
WRAPPED = b"vault:v1:" + b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w"

Operation = Callable[[Any], object]


def _operations() -> dict[str, Callable[[Any], object]]:
    def kms(client: Any) -> VaultTransitKms:
        return VaultTransitKms(client, key_name="fabric")

    def kv(client: Any) -> VaultKvSecretStore:
        return VaultKvSecretStore(client, mount_point="secret", path_prefix="fabric")

    return {
        "kms.generate_data_key": lambda c: kms(c).generate_data_key(CTX),
        "kms.unwrap": lambda c: kms(c).unwrap(WRAPPED, CTX),
        "kms.rewrap": lambda c: kms(c).rewrap(WRAPPED, CTX),
        "kms.rotate": lambda c: kms(c).rotate(),
        "kms.current_version": lambda c: kms(c).current_version,
        "kms.ensure_key": lambda c: kms(c).ensure_key(),
        "envelope.seal": lambda c: seal(
            kms(c), CANARY_SECRET.encode(), EnvelopeContext("acme", "secret", "acme/db")
        ),
        "kv.put": lambda c: kv(c).put("acme/db", CANARY_SECRET),
        "kv.get": lambda c: kv(c).get("acme/db"),
        "kv.delete": lambda c: kv(c).delete("acme/db"),
        "kv.refs": lambda c: kv(c).refs(),
    }


OPERATIONS = _operations()


@pytest.fixture(autouse=True)
def _in_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty directory and prove afterwards that nothing was written there (no
    local fallback file, no spool)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    assert list(work.iterdir()) == []


def _assert_unavailable(error: FabricError, *, says: str) -> None:
    assert isinstance(error, SourceUnavailable)
    assert status_for(error) is grpc.StatusCode.UNAVAILABLE
    message = str(error)
    assert message.startswith("the secret service is unavailable")
    assert says in message
    assert "no local fallback" in message
    for canary in (CANARY_SECRET, CANARY_TOKEN):
        assert canary not in message and canary not in repr(error)
    # The hvac/requests exception is not chained: its text could carry request content.
    assert error.__cause__ is None and error.__context__ is None


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_closed_port_is_unavailable(name: str) -> None:
    url = closed_port_url()
    client = vault_client(url, CANARY_TOKEN, timeout=2.0)
    with pytest.raises(SourceUnavailable) as caught:
        OPERATIONS[name](client)
    _assert_unavailable(caught.value, says="cannot connect to Vault")
    assert url in str(caught.value)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_sealed_vault_is_unavailable(name: str) -> None:
    with failing_vault(503, ["Vault is sealed"]) as peer:
        client = vault_client(peer.url, CANARY_TOKEN)
        with pytest.raises(SourceUnavailable) as caught:
            OPERATIONS[name](client)
    _assert_unavailable(caught.value, says="Vault is sealed; unseal it")
    assert len(peer.requests) == 1, "one real request, no retry storm, no second path"
    assert peer.requests[0].path.startswith("/v1/")


def test_a_sealed_vault_receives_the_write_and_nothing_else_keeps_it(tmp_path: Path) -> None:
    with failing_vault(503, ["Vault is sealed"]) as peer:
        store = VaultKvSecretStore(vault_client(peer.url, CANARY_TOKEN))
        with pytest.raises(SourceUnavailable):
            store.put("acme/db", CANARY_SECRET)
        with pytest.raises(SourceUnavailable):
            store.get("acme/db")
    (request,) = [r for r in peer.requests if r.method in ("POST", "PUT")]
    assert request.path == "/v1/secret/data/fabric/acme/db"
    assert json.loads(request.body) == {"data": {"value": CANARY_SECRET}, "options": {}}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY_SECRET.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    ("status", "errors", "says"),
    [
        (503, [], "Vault is down or in standby (HTTP 503)"),
        (500, ["internal error"], "HTTP 500"),
        (502, ["bad gateway"], "HTTP 502"),
        (501, ["Vault is not initialized"], "HTTP 501"),
        (429, ["rate limited"], "HTTP 429"),
        (403, ["permission denied"], "refused the gateway's token (HTTP 403)"),
        (401, ["missing client token"], "refused the gateway's token (HTTP 401)"),
    ],
)
@pytest.mark.parametrize("name", ["kms.generate_data_key", "kms.unwrap", "kv.put", "kv.get"])
def test_other_failures_are_unavailable(
    status: int, errors: list[str], says: str, name: str
) -> None:
    with failing_vault(status, errors) as peer, pytest.raises(SourceUnavailable) as caught:
        OPERATIONS[name](vault_client(peer.url, CANARY_TOKEN))
    _assert_unavailable(caught.value, says=says)
    for text in errors:  # Vault's own error texts are not passed on
        assert text not in str(caught.value)


def test_a_hung_vault_times_out_as_unavailable() -> None:
    with silent_vault() as url:
        client = vault_client(url, CANARY_TOKEN, timeout=0.2)
        with pytest.raises(SourceUnavailable) as caught:
            VaultKvSecretStore(client).get("acme/db")
    _assert_unavailable(caught.value, says="did not answer in time")


def test_a_rejected_ciphertext_is_an_integrity_error() -> None:
    with failing_vault(400, ["cipher: message authentication failed"]) as peer:
        kms = VaultTransitKms(vault_client(peer.url, CANARY_TOKEN), key_name="fabric")
        with pytest.raises(IntegrityError):
            kms.unwrap(WRAPPED, CTX)
    (request,) = peer.requests
    assert request.path == "/v1/transit/decrypt/fabric"
    body = json.loads(request.body)
    assert body["ciphertext"] == WRAPPED.decode()
    assert body["context"] == "YWNtZQ=="  # base64("acme"): the per-tenant derived key


def test_a_malformed_wrapped_key_never_reaches_vault() -> None:
    with failing_vault(503, ["Vault is sealed"]) as peer:
        kms = VaultTransitKms(vault_client(peer.url, CANARY_TOKEN), key_name="fabric")
        for bad in (b"not-a-ciphertext", b"vault:v1:", b"\xff\xfe", WRAPPED + b" "):
            with pytest.raises(IntegrityError):
                kms.unwrap(bad, CTX)
    assert peer.requests == []


def test_404_means_missing_for_get_and_nothing_for_delete_and_refs() -> None:
    with failing_vault(404, []) as peer:
        store = VaultKvSecretStore(vault_client(peer.url, CANARY_TOKEN))
        with pytest.raises(NotFound, match="acme/db"):
            store.get("acme/db")
        store.delete("acme/db")
        assert store.refs() == []
        with pytest.raises(NotFound, match="transit key"):
            VaultTransitKms(vault_client(peer.url, CANARY_TOKEN)).rotate()
    assert [r.method for r in peer.requests] == ["GET", "DELETE", "LIST", "POST"]


def test_the_token_and_user_info_stay_out_of_messages_and_reprs() -> None:
    url = closed_port_url().replace("http://", "http://admin:hunter2@")
    client = vault_client(url, CANARY_TOKEN, timeout=2.0)
    kms, store = VaultTransitKms(client), VaultKvSecretStore(client)
    with pytest.raises(SourceUnavailable) as caught:
        store.get("acme/db")
    shown = str(caught.value) + repr(kms) + repr(store)
    assert "hunter2" not in shown and CANARY_TOKEN not in shown
    assert os.listdir(".") == []
