"""Envelope encryption: seal bytes under a fresh data key from a `Kms`, bound to a context.

Every `seal` asks the KMS for a fresh data key (so a nonce can never repeat under a key:
each key encrypts exactly one message) and encrypts with AES-256-GCM and a random 96-bit
nonce. The cost is one data-key request per message: microseconds with the local key
ring, one round trip with Vault transit (cache sealed values, not keys, if that matters).

The context (tenant, purpose, subject) and the blob's header, key version included, are
the associated data: a blob copied to another tenant, purpose or subject, or with any
byte changed, does not open. Context values are identifiers, never personal data.

Sealed format, version 1 (all integers big-endian)::

    magic        4 bytes   b"FBSL"
    format       1 byte    1
    key_version  4 bytes   master-key version that wrapped the data key
    wrapped_len  2 bytes   length of the wrapped data key
    wrapped      wrapped_len bytes (KMS-specific)
    nonce        12 bytes
    ciphertext   len(plaintext) + 16 bytes (AES-GCM ciphertext and tag)
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fabric.errors import IntegrityError, InvalidArgument
from fabric.security.kms import MAX_CONTEXT_VALUE_BYTES, Kms, canonical_context

MAGIC = b"FBSL"
"""First bytes of every sealed blob."""
FORMAT_VERSION = 1
"""The sealed format this module writes; it opens only this one."""
NONCE_BYTES = 12
TAG_BYTES = 16

_HEADER = struct.Struct(">4sBIH")
_MIN_BLOB = _HEADER.size + NONCE_BYTES + TAG_BYTES


@dataclass(frozen=True, slots=True)
class EnvelopeContext:
    """What a sealed blob belongs to; all three must match to open it.

    `tenant` owns the data, `purpose` says what it is for (``"secret"``,
    ``"cache"``), `subject` names the one thing sealed (a secret reference, a connection
    id). Identifiers only: never personal data, never a secret.
    """

    tenant: str
    purpose: str
    subject: str

    def __post_init__(self) -> None:
        for name in ("tenant", "purpose", "subject"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidArgument(f"an envelope context needs a non-empty {name}")
            if len(value.encode("utf-8", "surrogatepass")) > MAX_CONTEXT_VALUE_BYTES:
                raise InvalidArgument(
                    f"envelope context {name} is longer than {MAX_CONTEXT_VALUE_BYTES} bytes"
                )

    def kms_context(self) -> dict[str, str]:
        """The mapping handed to the KMS, which binds the wrapped data key to it."""
        return {"tenant": self.tenant, "purpose": self.purpose, "subject": self.subject}


def seal(kms: Kms, plaintext: bytes, context: EnvelopeContext) -> bytes:
    """Encrypt `plaintext` under a fresh data key, bound to `context`."""
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise InvalidArgument("only bytes can be sealed; encode text first")
    if not isinstance(context, EnvelopeContext):
        raise InvalidArgument("seal needs an EnvelopeContext")
    data_key = kms.generate_data_key(context.kms_context())
    wrapped = data_key.wrapped
    if len(wrapped) > 0xFFFF:
        raise InvalidArgument("the KMS returned a wrapped key longer than 65535 bytes")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, data_key.key_version, len(wrapped)) + wrapped
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = AESGCM(data_key.plaintext).encrypt(
        nonce, bytes(plaintext), _associated_data(header, data_key.key_version, context)
    )
    return header + nonce + body


def open_sealed(kms: Kms, blob: bytes, context: EnvelopeContext) -> bytes:
    """The plaintext of a sealed blob; `IntegrityError` if any byte was altered, the blob
    was cut or extended, or `context` is not the one it was sealed with."""
    if not isinstance(context, EnvelopeContext):
        raise InvalidArgument("open_sealed needs an EnvelopeContext")
    key_version, header, wrapped, nonce, body = _split(blob)
    data_key = kms.unwrap(wrapped, context.kms_context())
    if len(data_key) != 32:
        raise IntegrityError("the sealed data's key does not unwrap to an AES-256 key")
    try:
        return AESGCM(data_key).decrypt(nonce, body, _associated_data(header, key_version, context))
    except InvalidTag:
        raise IntegrityError(
            "the sealed data does not open: it was altered, or it belongs to another "
            "tenant, purpose or subject"
        ) from None


def sealed_key_version(blob: bytes) -> int:
    """The master-key version a blob's data key is wrapped with (unauthenticated: a hint
    for planning re-seals after a rotation, not a guarantee)."""
    return _split(blob)[0]


def reseal(kms: Kms, blob: bytes, context: EnvelopeContext) -> bytes:
    """Open a blob and seal its content again under a fresh key on the current version."""
    return seal(kms, open_sealed(kms, blob, context), context)


def _split(blob: bytes) -> tuple[int, bytes, bytes, bytes, bytes]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise InvalidArgument("sealed data must be bytes")
    blob = bytes(blob)
    if len(blob) < _MIN_BLOB:
        raise IntegrityError("the sealed data is truncated")
    magic, fmt, key_version, wrapped_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("this is not sealed data (wrong magic bytes)")
    if fmt != FORMAT_VERSION:
        raise IntegrityError(
            f"the sealed data has format {fmt}; this gateway opens format {FORMAT_VERSION}"
        )
    header_end = _HEADER.size + wrapped_len
    if len(blob) < header_end + NONCE_BYTES + TAG_BYTES or wrapped_len == 0:
        raise IntegrityError("the sealed data is truncated")
    header = blob[:header_end]
    wrapped = blob[_HEADER.size : header_end]
    nonce = blob[header_end : header_end + NONCE_BYTES]
    return key_version, header, wrapped, nonce, blob[header_end + NONCE_BYTES :]


def _associated_data(header: bytes, key_version: int, context: EnvelopeContext) -> bytes:
    bound = canonical_context(
        {
            "format": str(FORMAT_VERSION),
            "key_version": str(key_version),
            **context.kms_context(),
        }
    )
    return b"fabric.envelope/1\x00" + struct.pack(">I", len(header)) + header + bound
