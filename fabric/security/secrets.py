"""Secret storage: the `SecretStore` contract and the sealed local file behind it.

Connections hold references (``"acme/orders-db/password"``), never secret values; the
store resolves a reference when a pool needs it. Values are write-only through the API,
sealed at rest, and appear in no repr, exception or log line: messages name the
reference, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fabric.errors import FailedPrecondition, InvalidArgument, NotFound
from fabric.security._files import process_lock, read_private, write_private
from fabric.security.envelope import EnvelopeContext, open_sealed, seal
from fabric.security.kms import Kms

MAX_REF_LENGTH = 200
"""Longest secret reference, in characters."""
MAX_SECRET_BYTES = 64 * 1024
"""Largest secret value (UTF-8): passwords, tokens, keys, certificates; not files."""
SECRET_PURPOSE = "secret"
"""The envelope purpose every stored secret is sealed under."""

_REF_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@runtime_checkable
class SecretStore(Protocol):
    """Secrets by reference. Every backend passes tests/unit/test_secret_store.py."""

    def put(self, ref: str, secret: str) -> None:
        """Store `secret` under `ref`, replacing any value it had."""
        ...

    def get(self, ref: str) -> str:
        """The secret under `ref`; `NotFound` if there is none."""
        ...

    def delete(self, ref: str) -> None:
        """Remove the secret under `ref`. Idempotent: deleting a missing ref succeeds,
        so purges and retries need no existence check."""
        ...

    def refs(self) -> list[str]:
        """Every stored reference, sorted. Names only, never values."""
        ...


def validate_ref(ref: str) -> str:
    """`ref` if it is a valid reference: slash-separated segments of letters, digits,
    ``.``, ``_`` and ``-``, each starting with a letter or digit (so no ``..``, no
    leading or trailing slash), at most `MAX_REF_LENGTH` characters."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("a secret reference must be a non-empty string")
    if len(ref) > MAX_REF_LENGTH or not _REF_PATTERN.fullmatch(ref):
        # Not echoed: a reference that fails the pattern may be a secret passed by mistake.
        raise InvalidArgument(
            "a secret reference is invalid: use segments of letters, digits, '.', '_' and "
            "'-' separated by '/', each starting with a letter or digit, at most "
            f"{MAX_REF_LENGTH} characters"
        )
    return ref


def encode_secret(secret: str) -> bytes:
    """The UTF-8 bytes of a secret value, checked for type and size (never echoed)."""
    if not isinstance(secret, str):
        raise InvalidArgument("a secret value must be a string")
    try:
        encoded = secret.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("a secret value must be valid Unicode text") from None
    if len(encoded) > MAX_SECRET_BYTES:
        raise InvalidArgument(f"a secret value may be at most {MAX_SECRET_BYTES} bytes")
    return encoded


_FILE_FORMAT = 1


class SealedFileSecretStore:
    """Secrets in one local file (mode 0600), each sealed separately by a `Kms`.

    The embedded default. Each value is sealed with context (tenant, ``"secret"``, ref),
    so a sealed value copied to another reference does not open. References are stored
    in the clear (they are names, like connection ids); values never are. Writes replace
    the file atomically under a thread lock and an advisory process lock; every call
    re-reads the file, so several stores (or processes) on one file agree.
    """

    def __init__(self, path: Path, kms: Kms, *, tenant: str = "fabric") -> None:
        """`path` is the sealed file (created on the first `put`); `tenant` goes into every
        seal context: the gateway's own secrets use the default."""
        self._path = Path(path)
        self._kms = kms
        self._tenant = tenant
        EnvelopeContext(tenant, SECRET_PURPOSE, "probe")  # validates tenant now
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SealedFileSecretStore(path={str(self._path)!r}, tenant={self._tenant!r})"

    @property
    def path(self) -> Path:
        """The sealed file."""
        return self._path

    def put(self, ref: str, secret: str) -> None:
        """Seal `secret` and store it under `ref`, replacing any previous value."""
        validate_ref(ref)
        blob = seal(self._kms, encode_secret(secret), self._context(ref))
        with self._lock, process_lock(self._path):
            entries = self._read()
            entries[ref] = base64.b64encode(blob).decode("ascii")
            self._write(entries)

    def get(self, ref: str) -> str:
        """The secret under `ref`: `NotFound` if none, `IntegrityError` if the sealed value
        was altered or moved from another reference."""
        validate_ref(ref)
        with self._lock:
            encoded = self._read().get(ref)
        if encoded is None:
            raise NotFound(f"no secret is stored under reference {ref!r}")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FailedPrecondition(
                f"secret file {self._path} is malformed (reference {ref!r} is not base64); "
                "restore it from a backup"
            ) from None
        return open_sealed(self._kms, blob, self._context(ref)).decode("utf-8")

    def delete(self, ref: str) -> None:
        """Remove `ref` if it is stored; succeed quietly if not."""
        validate_ref(ref)
        with self._lock, process_lock(self._path):
            entries = self._read()
            if entries.pop(ref, None) is not None:
                self._write(entries)

    def refs(self) -> list[str]:
        """Every stored reference, sorted."""
        with self._lock:
            return sorted(self._read())

    def _context(self, ref: str) -> EnvelopeContext:
        return EnvelopeContext(self._tenant, SECRET_PURPOSE, ref)

    def _read(self) -> dict[str, str]:
        if not self._path.exists():
            return {}
        raw = read_private(self._path, "secret file")
        try:
            document: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            document = None
        secrets = document.get("secrets") if isinstance(document, dict) else None
        if (
            not isinstance(document, dict)
            or document.get("format") != _FILE_FORMAT
            or not isinstance(secrets, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items())
        ):
            raise FailedPrecondition(
                f"secret file {self._path} is malformed; restore it from a backup"
            )
        return dict(secrets)

    def _write(self, entries: dict[str, str]) -> None:
        document = {
            "format": _FILE_FORMAT,
            "kind": "fabric-sealed-secrets",
            "kms_key_id": self._kms.key_id,
            "secrets": dict(sorted(entries.items())),
        }
        write_private(self._path, json.dumps(document, indent=2).encode("utf-8") + b"\n")
