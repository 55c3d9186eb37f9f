"""Envelope encryption: any altered byte fails, a wrong context fails, rotation keeps old
blobs readable and seals new ones on the new version (on every KMS backend)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fabric.api.status import status_for
from fabric.errors import IntegrityError, InvalidArgument
from fabric.security.envelope import (
    FORMAT_VERSION,
    MAGIC,
    NONCE_BYTES,
    TAG_BYTES,
    EnvelopeContext,
    open_sealed,
    reseal,
    seal,
    sealed_key_version,
)
from fabric.security.kms import Kms, LocalKeyRing
from tests.support.vault import live_transit_kms

CTX = EnvelopeContext(tenant="acme", purpose="secret", subject="orders-db/password")
PLANTED = b"canary-Zq8!-payload"


@pytest.fixture(params=["local", "vault"])
def kms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kms]:
    if request.param == "local":
        yield LocalKeyRing.create(tmp_path / "keyring.json")
    else:
        with live_transit_kms() as vault_kms:
            yield vault_kms


@pytest.mark.parametrize("size", [0, 1, 4096, 1 << 20])
def test_round_trip(kms: Kms, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    blob = seal(kms, plaintext, CTX)
    assert open_sealed(kms, blob, CTX) == plaintext
    if size >= len(PLANTED):
        assert plaintext[:64] not in blob


def test_layout_matches_the_documented_format(kms: Kms) -> None:
    blob = seal(kms, PLANTED, CTX)
    magic, fmt, key_version, wrapped_len = struct.unpack_from(">4sBIH", blob)
    assert (magic, fmt, key_version) == (MAGIC, FORMAT_VERSION, kms.current_version)
    assert len(blob) == 11 + wrapped_len + NONCE_BYTES + len(PLANTED) + TAG_BYTES
    assert sealed_key_version(blob) == key_version
    assert PLANTED not in blob


def test_flipping_any_byte_fails(kms: Kms) -> None:
    blob = seal(kms, PLANTED, CTX)
    for position in range(len(blob)):
        for mask in (0x01, 0x80):
            altered = bytearray(blob)
            altered[position] ^= mask
            with pytest.raises(IntegrityError):
                open_sealed(kms, bytes(altered), CTX)
    assert open_sealed(kms, blob, CTX) == PLANTED


def test_cutting_or_extending_fails(kms: Kms) -> None:
    blob = seal(kms, PLANTED, CTX)
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            open_sealed(kms, blob[:length], CTX)
    with pytest.raises(IntegrityError):
        open_sealed(kms, blob + b"\x00", CTX)


@pytest.mark.parametrize(
    "wrong",
    [
        EnvelopeContext("globex", "secret", "orders-db/password"),
        EnvelopeContext("acme", "cache", "orders-db/password"),
        EnvelopeContext("acme", "secret", "orders-db/user"),
        EnvelopeContext("Acme", "secret", "orders-db/password"),
    ],
)
def test_a_wrong_context_fails(kms: Kms, wrong: EnvelopeContext) -> None:
    blob = seal(kms, PLANTED, CTX)
    with pytest.raises(IntegrityError) as caught:
        open_sealed(kms, blob, wrong)
    assert PLANTED.decode() not in str(caught.value)


def test_rotation_keeps_old_blobs_readable_and_seals_new_ones_on_the_new_version(kms: Kms) -> None:
    first = kms.current_version
    old = seal(kms, b"sealed before the rotation", CTX)
    second = kms.rotate()
    new = seal(kms, b"sealed after the rotation", CTX)
    assert (sealed_key_version(old), sealed_key_version(new)) == (first, second)
    assert open_sealed(kms, old, CTX) == b"sealed before the rotation"
    assert open_sealed(kms, new, CTX) == b"sealed after the rotation"
    moved = reseal(kms, old, CTX)
    assert sealed_key_version(moved) == second
    assert open_sealed(kms, moved, CTX) == b"sealed before the rotation"


def test_rotation_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyRing.create(path)
    old = seal(ring, b"v1", CTX)
    ring.rotate()
    new = seal(ring, b"v2", CTX)
    restarted = LocalKeyRing.load(path)
    assert open_sealed(restarted, old, CTX) == b"v1"
    assert open_sealed(restarted, new, CTX) == b"v2"


def test_every_message_gets_a_fresh_key_and_nonce(kms: Kms) -> None:
    blobs = [seal(kms, PLANTED, CTX) for _ in range(3)]
    assert len(set(blobs)) == 3
    wrapped_len = struct.unpack_from(">H", blobs[0], 9)[0]
    nonce_at = 11 + wrapped_len
    assert len({b[11:nonce_at] for b in blobs}) == 3
    assert len({b[nonce_at : nonce_at + NONCE_BYTES] for b in blobs}) == 3


def test_another_key_ring_cannot_open(tmp_path: Path) -> None:
    ring = LocalKeyRing.create(tmp_path / "a.json")
    stranger = LocalKeyRing.create(tmp_path / "b.json")
    with pytest.raises(IntegrityError):
        open_sealed(stranger, seal(ring, PLANTED, CTX), CTX)


def test_integrity_errors_are_invalid_argument_on_the_wire(tmp_path: Path) -> None:
    ring = LocalKeyRing.create(tmp_path / "keyring.json")
    with pytest.raises(IntegrityError) as caught:
        open_sealed(ring, b"garbage" * 10, CTX)
    assert isinstance(caught.value, InvalidArgument)
    assert caught.value.code == "integrity_error"
    assert status_for(caught.value) is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("tenant", "purpose", "subject"),
    [
        ("", "secret", "s"),
        ("t", "", "s"),
        ("t", "secret", ""),
        ("t" * 1025, "p", "s"),
    ],
)
def test_a_context_needs_three_short_names(tenant: str, purpose: str, subject: str) -> None:
    with pytest.raises(InvalidArgument):
        EnvelopeContext(tenant, purpose, subject)


def test_only_bytes_are_sealed(tmp_path: Path) -> None:
    ring = LocalKeyRing.create(tmp_path / "keyring.json")
    with pytest.raises(InvalidArgument):
        seal(ring, "text", CTX)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        open_sealed(ring, "text", CTX)  # type: ignore[arg-type]
