"""The Kms contract on every backend (local key ring; Vault transit when one is
configured), then what only the local key ring file promises."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
)
from fabric.security.kms import Kms, LocalKeyRing, canonical_context, validate_context
from tests.support.vault import live_transit_kms

ACME = {"tenant": "acme", "purpose": "secret", "subject": "orders-db/password"}
GLOBEX = {"tenant": "globex", "purpose": "secret", "subject": "orders-db/password"}


@pytest.fixture(params=["local", "vault"])
def kms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kms]:
    if request.param == "local":
        yield LocalKeyRing.create(tmp_path / "keyring.json")
    else:
        with live_transit_kms() as vault_kms:
            yield vault_kms


# -- the contract, on every backend --------------------------------------------------------


def test_data_key_is_256_bits_wrapped_under_the_current_version(kms: Kms) -> None:
    key = kms.generate_data_key(ACME)
    assert len(key.plaintext) == 32
    assert key.key_version == kms.current_version
    assert key.key_id == kms.key_id
    assert key.plaintext not in key.wrapped
    assert kms.unwrap(key.wrapped, ACME) == key.plaintext


def test_every_data_key_is_fresh(kms: Kms) -> None:
    keys = [kms.generate_data_key(ACME) for _ in range(5)]
    assert len({k.plaintext for k in keys}) == 5
    assert len({k.wrapped for k in keys}) == 5


def test_another_tenants_context_does_not_unwrap(kms: Kms) -> None:
    key = kms.generate_data_key(ACME)
    with pytest.raises(IntegrityError):
        kms.unwrap(key.wrapped, GLOBEX)


def test_an_altered_wrapped_key_does_not_unwrap(kms: Kms) -> None:
    key = kms.generate_data_key(ACME)
    for position in (0, len(key.wrapped) // 2, len(key.wrapped) - 1):
        altered = bytearray(key.wrapped)
        altered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            kms.unwrap(bytes(altered), ACME)
    with pytest.raises(IntegrityError):
        kms.unwrap(key.wrapped[:-1], ACME)


def test_rotation_adds_a_version_and_old_keys_still_unwrap(kms: Kms) -> None:
    old = kms.generate_data_key(ACME)
    before = kms.current_version
    assert kms.rotate() == before + 1
    assert kms.current_version == before + 1
    new = kms.generate_data_key(ACME)
    assert (old.key_version, new.key_version) == (before, before + 1)
    assert kms.unwrap(old.wrapped, ACME) == old.plaintext
    assert kms.unwrap(new.wrapped, ACME) == new.plaintext


def test_rewrap_moves_a_key_to_the_current_version(kms: Kms) -> None:
    old = kms.generate_data_key(ACME)
    kms.rotate()
    rewrapped = kms.rewrap(old.wrapped, ACME)
    assert rewrapped != old.wrapped
    assert kms.unwrap(rewrapped, ACME) == old.plaintext
    with pytest.raises(IntegrityError):
        kms.rewrap(old.wrapped, GLOBEX)


def test_no_key_material_in_repr(kms: Kms) -> None:
    key = kms.generate_data_key(ACME)
    shown = repr(key) + repr(kms) + str(key)
    assert key.plaintext.hex() not in shown and repr(key.plaintext) not in shown
    assert repr(key.wrapped) not in shown


@pytest.mark.parametrize(
    "context",
    [{}, {"tenant": ""}, {"purpose": "secret"}, {"tenant": "acme", "n": 1}, {"tenant": "x" * 2000}],
)
def test_a_context_needs_a_tenant_and_only_short_strings(kms: Kms, context: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        kms.generate_data_key(context)


def test_satisfies_the_protocol(kms: Kms) -> None:
    assert isinstance(kms, Kms)


# -- the local key ring file -----------------------------------------------------------------


def test_key_ring_file_is_private_json_without_data_keys(tmp_path: Path) -> None:
    path = tmp_path / "home" / "keyring.json"
    ring = LocalKeyRing.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_bytes())
    assert document["current"] == 1 and [k["version"] for k in document["keys"]] == [1]
    assert document["key_id"] == ring.key_id
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700])
def test_a_ring_open_to_group_or_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyRing.create(path)
    os.chmod(path, mode)
    if mode == 0o700:  # owner-only, merely executable: allowed
        LocalKeyRing.load(path)
        return
    with pytest.raises(FailedPrecondition) as caught:
        LocalKeyRing.load(path)
    assert f"chmod 600 {path}" in str(caught.value)


def test_create_never_overwrites_and_load_needs_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyRing.create(path)
    before = path.read_bytes()
    with pytest.raises(AlreadyExists):
        LocalKeyRing.create(path)
    assert path.read_bytes() == before
    with pytest.raises(NotFound):
        LocalKeyRing.load(tmp_path / "missing.json")


def test_open_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    first = LocalKeyRing.open(path)
    second = LocalKeyRing.open(path)
    assert first.key_id == second.key_id
    key = first.generate_data_key(ACME)
    assert second.unwrap(key.wrapped, ACME) == key.plaintext


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 2}',
        b'{"format": 1, "key_id": "k", "current": 1, "keys": []}',
        b'{"format": 1, "key_id": "k", "current": 1, "keys": [{"version": 1, "material": "AAAA"}]}',
        b'{"format": 1, "key_id": "k", "current": 1, "keys": [{"version": 1, "material": "!!"}]}',
    ],
)
def test_a_malformed_ring_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(FailedPrecondition, match="malformed"):
        LocalKeyRing.load(path)


def test_rotation_persists_and_never_changes_old_versions(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyRing.create(path)
    old = ring.generate_data_key(ACME)
    v1_material = json.loads(path.read_bytes())["keys"][0]["material"]
    assert ring.rotate() == 2
    assert ring.rotate() == 3
    document = json.loads(path.read_bytes())
    assert [k["version"] for k in document["keys"]] == [1, 2, 3]
    assert document["keys"][0]["material"] == v1_material
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = LocalKeyRing.load(path)
    assert reloaded.current_version == 3 and reloaded.versions == (1, 2, 3)
    assert reloaded.unwrap(old.wrapped, ACME) == old.plaintext


def test_a_version_rotated_in_elsewhere_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    here, elsewhere = LocalKeyRing.create(path), None
    elsewhere = LocalKeyRing.load(path)  # stands for another gateway process
    assert elsewhere.rotate() == 2
    fresh = elsewhere.generate_data_key(ACME)
    assert here.unwrap(fresh.wrapped, ACME) == fresh.plaintext
    assert here.current_version == 2
    assert here.rotate() == 3  # rotates on top of the other's version, losing nothing
    assert LocalKeyRing.load(path).versions == (1, 2, 3)


def test_concurrent_rotations_lose_no_version(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    rings = [LocalKeyRing.create(path)] + [LocalKeyRing.load(path) for _ in range(3)]
    results: list[int] = []
    lock = threading.Lock()

    def rotate(ring: LocalKeyRing) -> None:
        for _ in range(5):
            version = ring.rotate()
            with lock:
                results.append(version)

    threads = [threading.Thread(target=rotate, args=(ring,)) for ring in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(2, 22))
    assert LocalKeyRing.load(path).versions == tuple(range(1, 22))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_local_wrapping_binds_purpose_subject_and_ring(tmp_path: Path) -> None:
    ring = LocalKeyRing.create(tmp_path / "a.json")
    other = LocalKeyRing.create(tmp_path / "b.json")
    key = ring.generate_data_key(ACME)
    for changed in (
        {**ACME, "purpose": "cache"},
        {**ACME, "subject": "other"},
        {**ACME, "extra": "x"},
    ):
        with pytest.raises(IntegrityError):
            ring.unwrap(key.wrapped, changed)
    with pytest.raises(IntegrityError):
        other.unwrap(key.wrapped, ACME)
    # Insertion order is not part of the context.
    assert ring.unwrap(key.wrapped, dict(reversed(list(ACME.items())))) == key.plaintext


def test_an_unknown_version_is_an_integrity_error(tmp_path: Path) -> None:
    ring = LocalKeyRing.create(tmp_path / "keyring.json")
    key = ring.generate_data_key(ACME)
    forged = key.wrapped[:1] + (99).to_bytes(4, "big") + key.wrapped[5:]
    with pytest.raises(IntegrityError, match="version 99"):
        ring.unwrap(forged, ACME)


def test_canonical_context_is_unambiguous() -> None:
    assert canonical_context({"a": "b", "c": "d"}) == canonical_context({"c": "d", "a": "b"})
    assert canonical_context({"a": "bc"}) != canonical_context({"ab": "c"})
    assert canonical_context({"a": "b\x00c"}) != canonical_context({"a": "b", "c": ""})
    assert validate_context({"tenant": "t"}) == {"tenant": "t"}


def test_public_names_match_all() -> None:
    import types

    import fabric.security as package

    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(package.__all__)
