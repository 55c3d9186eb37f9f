"""One suite for every SecretStore backend (sealed local file; Vault KV v2 when
FABRIC_TEST_VAULT_ADDR is set), then what only the sealed file promises."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.errors import FailedPrecondition, IntegrityError, InvalidArgument, NotFound
from fabric.security.envelope import sealed_key_version
from fabric.security.kms import LocalKeyRing
from fabric.security.secrets import MAX_SECRET_BYTES, SealedFileSecretStore, SecretStore
from tests.support.vault import live_kv_store

CANARY = "canary-pw-7Hq!x/9 ünï"


@pytest.fixture(params=["sealed_file", "vault_kv"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecretStore]:
    if request.param == "sealed_file":
        ring = LocalKeyRing.create(tmp_path / "keyring.json")
        yield SealedFileSecretStore(tmp_path / "secrets.sealed", ring)
    else:
        with live_kv_store() as vault_store:
            yield vault_store


def _same_backend(store: SecretStore) -> SecretStore:
    """A second, independent store on the same storage (another gateway replica)."""
    if isinstance(store, SealedFileSecretStore):
        ring = LocalKeyRing.load(store.path.parent / "keyring.json")
        return SealedFileSecretStore(store.path, ring)
    from fabric.security.vault import VaultKvSecretStore, vault_client

    original: VaultKvSecretStore = store  # type: ignore[assignment]
    client = vault_client(
        os.environ["FABRIC_TEST_VAULT_ADDR"], os.environ.get("FABRIC_TEST_VAULT_TOKEN", "root")
    )
    return VaultKvSecretStore(client, mount_point=original._mount, path_prefix=original._prefix)


# -- the contract, on every backend -----------------------------------------------------------


def test_put_then_get(store: SecretStore) -> None:
    store.put("acme/orders-db/password", CANARY)
    assert store.get("acme/orders-db/password") == CANARY


def test_put_replaces(store: SecretStore) -> None:
    store.put("acme/db", "first")
    store.put("acme/db", "second")
    assert store.get("acme/db") == "second"
    assert store.refs() == ["acme/db"]


@pytest.mark.parametrize(
    "secret",
    [
        "",
        " ",
        "a" * MAX_SECRET_BYTES,
        "line1\nline2\x00",
        "-----BEGIN KEY-----\nMIIB\n-----END KEY-----\n",
    ],
)
def test_any_text_is_kept_exactly(store: SecretStore, secret: str) -> None:
    store.put("acme/value", secret)
    assert store.get("acme/value") == secret


def test_get_of_a_missing_ref_is_not_found(store: SecretStore) -> None:
    store.put("acme/present", CANARY)
    with pytest.raises(NotFound) as caught:
        store.get("acme/absent")
    assert "acme/absent" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_delete_removes_and_is_idempotent(store: SecretStore) -> None:
    store.put("acme/a", "1")
    store.put("acme/b", "2")
    store.delete("acme/a")
    with pytest.raises(NotFound):
        store.get("acme/a")
    store.delete("acme/a")
    store.delete("never/existed")
    assert store.get("acme/b") == "2"
    assert store.refs() == ["acme/b"]


def test_refs_lists_names_only_sorted(store: SecretStore) -> None:
    assert store.refs() == []
    for ref in ("globex/db/password", "acme/db/password", "acme/api-token", "top"):
        store.put(ref, CANARY)
    refs = store.refs()
    assert refs == ["acme/api-token", "acme/db/password", "globex/db/password", "top"]
    assert CANARY not in repr(refs)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "/a",
        "a/",
        "a//b",
        "../x",
        "a/../b",
        "a/./b",
        ".hidden",
        "a b",
        "a\nb",
        "a\\b",
        "ä",
        "a" * 201,
        "a?b",
        "a%2fb",
    ],
)
def test_invalid_refs_are_rejected(store: SecretStore, ref: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.put(ref, CANARY)
    if len(ref) > 2:
        assert ref not in str(caught.value)  # a bad ref may be a misplaced secret
    with pytest.raises(InvalidArgument):
        store.get(ref)
    with pytest.raises(InvalidArgument):
        store.delete(ref)


def test_invalid_values_are_rejected_without_echo(store: SecretStore) -> None:
    too_big = CANARY + "x" * MAX_SECRET_BYTES
    for bad in (too_big, "\ud800" + CANARY, b"bytes"):
        with pytest.raises(InvalidArgument) as caught:
            store.put("acme/db", bad)  # type: ignore[arg-type]
        assert CANARY not in str(caught.value)
    assert store.refs() == []


def test_values_never_in_repr(store: SecretStore) -> None:
    store.put("acme/db", CANARY)
    assert CANARY not in repr(store) and CANARY not in str(store)


def test_a_second_store_on_the_same_storage_agrees(store: SecretStore) -> None:
    store.put("acme/db", CANARY)
    other = _same_backend(store)
    assert other.get("acme/db") == CANARY
    other.put("acme/db", "rotated")
    other.put("acme/api", "token")
    assert store.get("acme/db") == "rotated"
    assert store.refs() == ["acme/api", "acme/db"]


def test_concurrent_writers_lose_nothing(store: SecretStore) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(10):
                store.put(f"w{worker}/s{i}", f"value-{worker}-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.refs()) == 80
    assert all(store.get(f"w{w}/s{i}") == f"value-{w}-{i}" for w in range(8) for i in range(10))


def test_satisfies_the_protocol(store: SecretStore) -> None:
    assert isinstance(store, SecretStore)


# -- the sealed local file ------------------------------------------------------------------


@pytest.fixture
def ring(tmp_path: Path) -> LocalKeyRing:
    return LocalKeyRing.create(tmp_path / "keyring.json")


@pytest.fixture
def sealed(tmp_path: Path, ring: LocalKeyRing) -> SealedFileSecretStore:
    return SealedFileSecretStore(tmp_path / "secrets.sealed", ring)


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode("utf-8")
    return [
        raw,
        raw[:12],
        secret.encode("utf-16-le")[:24],
        base64.b64encode(raw)[:16],
        raw.hex().encode()[:24],
        json.dumps(secret).encode()[1:13],
    ]


def test_no_file_ever_holds_the_secret_in_the_clear(
    tmp_path: Path, sealed: SealedFileSecretStore
) -> None:
    sealed.put("acme/db", CANARY)
    sealed.put("acme/db", CANARY + "2")
    sealed.put("acme/other", CANARY)
    sealed.delete("acme/other")
    assert sealed.get("acme/db") == CANARY + "2"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} == {
        "keyring.json",
        "keyring.json.lock",
        "secrets.sealed",
        "secrets.sealed.lock",
    }
    for path in written:
        content = path.read_bytes()
        for form in _forms(CANARY):
            assert form not in content, f"{path.name} holds the secret"
    assert b"acme/db" in (tmp_path / "secrets.sealed").read_bytes()  # names are metadata


def test_file_is_private(sealed: SealedFileSecretStore) -> None:
    sealed.put("acme/db", CANARY)
    assert stat.S_IMODE(sealed.path.stat().st_mode) == 0o600
    lock = sealed.path.with_name(sealed.path.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_a_file_open_to_others_is_refused(sealed: SealedFileSecretStore) -> None:
    sealed.put("acme/db", CANARY)
    os.chmod(sealed.path, 0o644)
    for call in (lambda: sealed.get("acme/db"), sealed.refs, lambda: sealed.put("acme/x", "y")):
        with pytest.raises(FailedPrecondition, match="chmod 600"):
            call()


def test_a_sealed_value_moved_to_another_ref_does_not_open(sealed: SealedFileSecretStore) -> None:
    sealed.put("acme/db", CANARY)
    sealed.put("acme/api", "public-ish")
    document = json.loads(sealed.path.read_bytes())
    document["secrets"]["acme/api"] = document["secrets"]["acme/db"]
    sealed.path.write_bytes(json.dumps(document).encode())
    with pytest.raises(IntegrityError) as caught:
        sealed.get("acme/api")
    assert CANARY not in str(caught.value)
    assert sealed.get("acme/db") == CANARY


def test_an_altered_value_does_not_open(sealed: SealedFileSecretStore) -> None:
    sealed.put("acme/db", CANARY)
    document = json.loads(sealed.path.read_bytes())
    blob = bytearray(base64.b64decode(document["secrets"]["acme/db"]))
    blob[-1] ^= 0x01
    document["secrets"]["acme/db"] = base64.b64encode(bytes(blob)).decode()
    sealed.path.write_bytes(json.dumps(document).encode())
    with pytest.raises(IntegrityError):
        sealed.get("acme/db")


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 9, "secrets": {}}', b'{"format": 1, "secrets": {"a": 1}}'],
)
def test_a_malformed_file_is_refused(sealed: SealedFileSecretStore, content: bytes) -> None:
    sealed.path.write_bytes(content)
    os.chmod(sealed.path, 0o600)
    with pytest.raises(FailedPrecondition, match="malformed"):
        sealed.refs()


def test_another_tenant_or_key_ring_cannot_open(
    tmp_path: Path, ring: LocalKeyRing, sealed: SealedFileSecretStore
) -> None:
    sealed.put("acme/db", CANARY)
    as_globex = SealedFileSecretStore(sealed.path, ring, tenant="globex")
    with pytest.raises(IntegrityError):
        as_globex.get("acme/db")
    stranger = SealedFileSecretStore(sealed.path, LocalKeyRing.create(tmp_path / "other-ring.json"))
    with pytest.raises(IntegrityError):
        stranger.get("acme/db")


def test_rotation_keeps_old_secrets_and_seals_new_ones_on_the_new_version(
    ring: LocalKeyRing, sealed: SealedFileSecretStore
) -> None:
    sealed.put("acme/old", "before")
    assert ring.rotate() == 2
    sealed.put("acme/new", "after")

    def version(ref: str) -> int:
        document = json.loads(sealed.path.read_bytes())
        return sealed_key_version(base64.b64decode(document["secrets"][ref]))

    assert (version("acme/old"), version("acme/new")) == (1, 2)
    assert (sealed.get("acme/old"), sealed.get("acme/new")) == ("before", "after")


def test_no_temporary_files_are_left_behind(tmp_path: Path, sealed: SealedFileSecretStore) -> None:
    for i in range(20):
        sealed.put(f"acme/s{i}", CANARY)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_no_file_is_written_until_the_first_put(
    tmp_path: Path, sealed: SealedFileSecretStore
) -> None:
    assert sealed.refs() == []
    with pytest.raises(NotFound):
        sealed.get("acme/db")
    sealed.delete("acme/db")
    assert not sealed.path.exists()
