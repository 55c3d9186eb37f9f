"""Key management: the `Kms` contract for envelope encryption and the local key ring.

A KMS hands out data keys: 32 random bytes in the clear for one use, plus the same key
wrapped (encrypted) under a versioned master key that never leaves the KMS. Only the
wrapped form is stored. Rotation adds a master-key version; old versions stay available
for unwrapping, so nothing has to be re-encrypted when a key rotates.

The *context* passed with every call is a small mapping of identifiers (`tenant`,
`purpose`, `subject`). It is bound to the wrapped key: a wrapped key presented with
another context does not unwrap. Context values are names, never personal data or
secrets, because a KMS may log them.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fabric.errors import AlreadyExists, FailedPrecondition, IntegrityError, InvalidArgument
from fabric.security._files import process_lock, read_private, write_private

DATA_KEY_BYTES = 32
"""Data keys are AES-256 keys."""
MAX_CONTEXT_VALUE_BYTES = 1024
"""Longest context key or value (UTF-8); contexts name things, they do not carry data."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """One data key: use `plaintext` once, store only `wrapped`.

    `plaintext` and `wrapped` are left out of `repr` so a logged key shows no material.
    """

    plaintext: bytes = field(repr=False)
    """The 32-byte AES-256 key in the clear; keep it in memory only, for one message."""
    wrapped: bytes = field(repr=False)
    """The key encrypted under master-key version `key_version`; safe to store."""
    key_version: int
    """The master-key version that wrapped it."""
    key_id: str
    """Which master key (key ring or transit key) wrapped it."""


@runtime_checkable
class Kms(Protocol):
    """Data keys for envelope encryption, under versioned, rotatable master keys."""

    @property
    def key_id(self) -> str:
        """A stable name of the master key (not secret), e.g. for logs and metrics."""
        ...

    @property
    def current_version(self) -> int:
        """The master-key version new data keys are wrapped with."""
        ...

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A fresh random data key, wrapped under the current version and bound to `context`."""
        ...

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext of a wrapped data key; `IntegrityError` if it was tampered with,
        belongs to another context or to a key version this KMS does not have."""
        ...

    def rewrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The same data key wrapped under the current version (after a rotation)."""
        ...

    def rotate(self) -> int:
        """Add a master-key version, make it current and return it; old versions still
        unwrap what they wrapped."""
        ...


def validate_context(context: Mapping[str, str]) -> dict[str, str]:
    """A checked copy of a KMS context: string keys and values, a non-empty `tenant`."""
    if not isinstance(context, Mapping):
        raise InvalidArgument("a KMS context must be a mapping of names to strings")
    checked: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument("a KMS context must map strings to strings")
        for part in (key, value):
            if len(part.encode("utf-8", "surrogatepass")) > MAX_CONTEXT_VALUE_BYTES:
                raise InvalidArgument(
                    f"a KMS context entry is longer than {MAX_CONTEXT_VALUE_BYTES} bytes; "
                    "a context names things (tenant, purpose, subject), it carries no data"
                )
        checked[key] = value
    if not checked.get("tenant"):
        raise InvalidArgument("a KMS context needs a non-empty 'tenant'")
    return checked


def canonical_context(context: Mapping[str, str]) -> bytes:
    """One byte string per context, independent of insertion order, unambiguous.

    Entries are sorted by key; each key and value is UTF-8 with a 4-byte big-endian length
    prefix, so no two different contexts encode alike (no separator tricks).
    """
    out = bytearray(struct.pack(">I", len(context)))
    for key in sorted(context):
        for part in (key, context[key]):
            encoded = part.encode("utf-8")
            out += struct.pack(">I", len(encoded))
            out += encoded
    return bytes(out)


# Local wrapped-key format: wrap-format byte, master version (u32), nonce, AES-GCM(data key).
_WRAP_FORMAT = 1
_WRAP_HEADER = struct.Struct(">BI")
_NONCE_BYTES = 12
_WRAPPED_BYTES = _WRAP_HEADER.size + _NONCE_BYTES + DATA_KEY_BYTES + 16
_FILE_FORMAT = 1


class LocalKeyRing:
    """Versioned AES-256-GCM master keys in one JSON file (mode 0600) under FABRIC_HOME.

    The embedded default KMS. Wrapping binds the key ring id, the master version and the
    canonical context as associated data. The file is written atomically; a file that
    group or others can read is refused. Thread-safe; rotations from several processes
    are serialised by an advisory lock, and a version rotated in by another process is
    picked up when a key wrapped with it is first seen.
    """

    __slots__ = ("_current", "_keys", "_lock", "_path", "key_id")

    def __init__(self, path: Path, key_id: str, keys: dict[int, bytes], current: int) -> None:
        """Use `create`, `load` or `open`; this takes already validated state."""
        self._path = path
        self.key_id = key_id
        self._keys = {version: AESGCM(material) for version, material in keys.items()}
        self._current = current
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LocalKeyRing(path={str(self._path)!r}, key_id={self.key_id!r}, "
            f"current_version={self._current})"
        )

    # -- construction -----------------------------------------------------------------

    @classmethod
    def create(cls, path: Path) -> LocalKeyRing:
        """A new key ring file with one fresh master key (version 1); `AlreadyExists`
        if `path` exists, so an existing ring is never overwritten."""
        path = Path(path)
        with process_lock(path):
            if path.exists():
                raise AlreadyExists(f"key ring {path} already exists; load it instead")
            key_id = "kr-" + secrets.token_hex(8)
            keys = {1: AESGCM.generate_key(bit_length=256)}
            write_private(path, _dump(key_id, keys, 1))
        return cls(path, key_id, keys, 1)

    @classmethod
    def load(cls, path: Path) -> LocalKeyRing:
        """The key ring in `path`: `NotFound` if missing, `FailedPrecondition` if it is
        readable by group or others or malformed."""
        path = Path(path)
        key_id, keys, current = _parse(path, read_private(path, "key ring"))
        return cls(path, key_id, keys, current)

    @classmethod
    def open(cls, path: Path) -> LocalKeyRing:
        """Load the key ring in `path`, creating it first if there is none."""
        path = Path(path)
        with process_lock(path):
            if not path.exists():
                key_id = "kr-" + secrets.token_hex(8)
                keys = {1: AESGCM.generate_key(bit_length=256)}
                write_private(path, _dump(key_id, keys, 1))
        return cls.load(path)

    # -- Kms ----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The key ring file."""
        return self._path

    @property
    def current_version(self) -> int:
        """The master-key version new data keys are wrapped with."""
        with self._lock:
            return self._current

    @property
    def versions(self) -> tuple[int, ...]:
        """Every master-key version this ring holds, oldest first."""
        with self._lock:
            return tuple(sorted(self._keys))

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A fresh random data key wrapped under the current version, bound to `context`."""
        checked = validate_context(context)
        plaintext = AESGCM.generate_key(bit_length=256)
        with self._lock:
            version, master = self._current, self._keys[self._current]
        return DataKey(
            plaintext, self._wrap(master, version, plaintext, checked), version, self.key_id
        )

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The data key in `wrapped`; `IntegrityError` on any tampering or other context."""
        checked = validate_context(context)
        if not isinstance(wrapped, bytes | bytearray) or len(wrapped) != _WRAPPED_BYTES:
            raise IntegrityError("the wrapped data key is malformed (wrong length)")
        fmt, version = _WRAP_HEADER.unpack_from(wrapped)
        if fmt != _WRAP_FORMAT:
            raise IntegrityError("the wrapped data key has an unknown format")
        master = self._master(version)
        nonce = bytes(wrapped[_WRAP_HEADER.size : _WRAP_HEADER.size + _NONCE_BYTES])
        body = bytes(wrapped[_WRAP_HEADER.size + _NONCE_BYTES :])
        try:
            return master.decrypt(nonce, body, self._aad(version, checked))
        except InvalidTag:
            raise IntegrityError(
                "the wrapped data key does not open: it was altered, or it belongs to "
                "another key ring, tenant, purpose or subject"
            ) from None

    def rewrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The data key in `wrapped`, wrapped again under the current version."""
        plaintext = self.unwrap(wrapped, context)
        with self._lock:
            version, master = self._current, self._keys[self._current]
        return self._wrap(master, version, plaintext, validate_context(context))

    def rotate(self) -> int:
        """Add a fresh master-key version, persist it atomically, make it current."""
        with self._lock, process_lock(self._path):
            # Re-read first: another process may have rotated since this ring was loaded.
            key_id, keys, _ = _parse(self._path, read_private(self._path, "key ring"))
            if key_id != self.key_id:
                raise FailedPrecondition(
                    f"key ring {self._path} was replaced by another ring ({key_id}); "
                    "restart the gateway to load it"
                )
            version = max(keys) + 1
            keys[version] = AESGCM.generate_key(bit_length=256)
            write_private(self._path, _dump(key_id, keys, version))
            self._keys = {v: AESGCM(material) for v, material in keys.items()}
            self._current = version
            return version

    # -- internals ------------------------------------------------------------------------

    def _aad(self, version: int, context: Mapping[str, str]) -> bytes:
        return (
            b"fabric.kms.local/1\x00"
            + self.key_id.encode()
            + struct.pack(">I", version)
            + canonical_context(context)
        )

    def _wrap(
        self, master: AESGCM, version: int, plaintext: bytes, context: Mapping[str, str]
    ) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = master.encrypt(nonce, plaintext, self._aad(version, context))
        return _WRAP_HEADER.pack(_WRAP_FORMAT, version) + nonce + body

    def _master(self, version: int) -> AESGCM:
        with self._lock:
            master = self._keys.get(version)
            if master is None:
                # Perhaps rotated in by another process since we loaded: look once more.
                key_id, keys, current = _parse(self._path, read_private(self._path, "key ring"))
                if key_id == self.key_id and version in keys:
                    self._keys = {v: AESGCM(material) for v, material in keys.items()}
                    self._current = current
                    master = self._keys[version]
        if master is None:
            raise IntegrityError(
                f"the wrapped data key names master-key version {version}, which key ring "
                f"{self.key_id} does not hold (altered data, or a ring restored from an "
                "older backup)"
            )
        return master


def _dump(key_id: str, keys: Mapping[int, bytes], current: int) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    document = {
        "format": _FILE_FORMAT,
        "kind": "fabric-local-key-ring",
        "key_id": key_id,
        "current": current,
        "keys": [
            {
                "version": version,
                "algorithm": "AES-256-GCM",
                "material": base64.b64encode(keys[version]).decode("ascii"),
                "created_at": now,
            }
            for version in sorted(keys)
        ],
    }
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def _parse(path: Path, raw: bytes) -> tuple[str, dict[int, bytes], int]:
    def malformed(why: str) -> FailedPrecondition:
        return FailedPrecondition(f"key ring {path} is malformed ({why}); restore it from a backup")

    try:
        document: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise malformed("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != _FILE_FORMAT:
        raise malformed(f"expected format {_FILE_FORMAT}")
    key_id, current, entries = document.get("key_id"), document.get("current"), document.get("keys")
    if not isinstance(key_id, str) or not key_id or not isinstance(entries, list):
        raise malformed("no key_id or keys")
    keys: dict[int, bytes] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise malformed("a key entry is not an object")
        version, material = entry.get("version"), entry.get("material")
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or version < 1
            or version in keys
        ):
            raise malformed("a key version is not a unique positive integer")
        try:
            decoded = base64.b64decode(str(material), validate=True)
        except ValueError:
            raise malformed(f"key version {version} is not base64") from None
        if len(decoded) != DATA_KEY_BYTES:
            raise malformed(f"key version {version} is not a 256-bit key")
        keys[version] = decoded
    if not isinstance(current, int) or current not in keys:
        raise malformed("the current version is not one of its keys")
    return key_id, keys, current
