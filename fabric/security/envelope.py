"""Envelope encryption: seal bytes under a data key from a `Kms`, bound to a context.

Every `seal` asks the KMS for a fresh data key (so a nonce can never repeat under a key:
each key encrypts exactly one message) and encrypts with AES-256-GCM and a random 96-bit
nonce. The cost is one data-key request per message: microseconds with the local key
ring, one round trip with Vault transit (cache sealed values, not keys, if that matters).

A *stream* of messages (`StreamCipher`: a query's request, its result chunks and their
acknowledgements) shares one data key instead: one data-key request for the whole
stream, one unwrap on the receiving side, then only AES-GCM per message. Each message
still has its own random 96-bit nonce (a stream carries thousands of messages at most,
far below the 2^32 random nonces one key may take) and its own context as associated
data, so a message moved to another subject or purpose, or into another stream, does
not open. The stream's key is bound in the KMS to the stream's id, which travels in the
clear (it is the request id that already names the reply subject).

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
from dataclasses import dataclass, field

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


# -- streams ------------------------------------------------------------------------------

STREAM_KEY_MAGIC = b"FBSK"
"""First bytes of a stream message that carries the stream's wrapped data key."""
STREAM_MAGIC = b"FBSM"
"""First bytes of a stream message sealed under a key its receiver already holds."""
STREAM_ID_BYTES = 16

_STREAM_KEY_HEADER = struct.Struct(">4sBIH")  # magic, format, key version, wrapped length
_STREAM_HEADER = struct.Struct(">4sB16s")  # magic, format, stream id


def stream_key_context(tenant: str, purpose: str, scope: str, stream_id: bytes) -> EnvelopeContext:
    """The KMS context a stream's data key is bound to: its tenant, the purpose of the
    stream, and `<scope>|<stream id>` (scope: what the stream belongs to, e.g. a stage)."""
    return EnvelopeContext(tenant=tenant, purpose=purpose, subject=f"{scope}|{stream_id.hex()}")


def stream_id_of(blob: bytes) -> bytes:
    """The stream a stream message belongs to (read from its clear header, so the
    receiver can find the key; whether it is genuine shows when it is opened).
    `IntegrityError` when `blob` is not a stream message."""
    view = bytes(blob[: _STREAM_HEADER.size])
    if view[:4] == STREAM_MAGIC and len(view) == _STREAM_HEADER.size:
        return view[5:]
    if bytes(blob[:4]) == STREAM_KEY_MAGIC and len(blob) >= _STREAM_KEY_HEADER.size:
        _magic, _fmt, _version, wrapped_len = _STREAM_KEY_HEADER.unpack_from(blob)
        start = _STREAM_KEY_HEADER.size + wrapped_len
        stream_id = bytes(blob[start : start + STREAM_ID_BYTES])
        if len(stream_id) == STREAM_ID_BYTES:
            return stream_id
    raise IntegrityError("this is not a sealed stream message")


@dataclass(slots=True)
class StreamCipher:
    """The data key of one stream of messages (see the module docstring).

    The side that starts a stream calls `start` (one data key from the KMS) and seals
    its first message `with_key`; the other side opens that message with `accept` (one
    unwrap), and from then on both seal and open with the same cipher.
    """

    stream_id: bytes
    key_version: int
    wrapped: bytes = field(repr=False)
    _aead: AESGCM = field(repr=False)

    @classmethod
    def start(cls, kms: Kms, stream_id: bytes, key_context: EnvelopeContext) -> StreamCipher:
        """A new stream: one fresh data key, bound to `key_context` (`stream_key_context`)."""
        _check_stream_id(stream_id)
        data_key = kms.generate_data_key(key_context.kms_context())
        if len(data_key.wrapped) > 0xFFFF:
            raise InvalidArgument("the KMS returned a wrapped key longer than 65535 bytes")
        return cls(stream_id, data_key.key_version, data_key.wrapped, AESGCM(data_key.plaintext))

    @classmethod
    def accept(
        cls,
        kms: Kms,
        blob: bytes,
        key_context: EnvelopeContext,
        context: EnvelopeContext,
    ) -> tuple[StreamCipher, bytes]:
        """The cipher of the stream a key-carrying message starts, and the message's
        plaintext; `IntegrityError` when the key or the message does not open with
        these contexts."""
        blob = bytes(blob)
        if len(blob) < _STREAM_KEY_HEADER.size:
            raise IntegrityError("the sealed stream message is truncated")
        magic, fmt, key_version, wrapped_len = _STREAM_KEY_HEADER.unpack_from(blob)
        if magic != STREAM_KEY_MAGIC:
            raise IntegrityError("this sealed message does not start a stream")
        if fmt != FORMAT_VERSION:
            raise IntegrityError(
                f"the sealed data has format {fmt}; this gateway opens format {FORMAT_VERSION}"
            )
        header_end = _STREAM_KEY_HEADER.size + wrapped_len + STREAM_ID_BYTES
        if wrapped_len == 0 or len(blob) < header_end + NONCE_BYTES + TAG_BYTES:
            raise IntegrityError("the sealed stream message is truncated")
        wrapped = blob[_STREAM_KEY_HEADER.size : _STREAM_KEY_HEADER.size + wrapped_len]
        stream_id = blob[header_end - STREAM_ID_BYTES : header_end]
        expected = key_context.subject.rsplit("|", 1)[-1]
        if stream_id.hex() != expected:
            raise IntegrityError("the sealed stream message belongs to another stream")
        key = kms.unwrap(wrapped, key_context.kms_context())
        if len(key) != 32:
            raise IntegrityError("the stream's key does not unwrap to an AES-256 key")
        cipher = cls(stream_id, key_version, wrapped, AESGCM(key))
        return cipher, cipher._decrypt(blob, header_end, context)

    def seal(self, plaintext: bytes, context: EnvelopeContext, *, with_key: bool = False) -> bytes:
        """Encrypt one message of the stream, bound to `context`; `with_key` puts the
        wrapped data key in front, for a receiver that does not hold it yet."""
        if with_key:
            header = (
                _STREAM_KEY_HEADER.pack(
                    STREAM_KEY_MAGIC, FORMAT_VERSION, self.key_version, len(self.wrapped)
                )
                + self.wrapped
                + self.stream_id
            )
        else:
            header = _STREAM_HEADER.pack(STREAM_MAGIC, FORMAT_VERSION, self.stream_id)
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = self._aead.encrypt(nonce, plaintext, self._associated_data(header, context))
        return b"".join((header, nonce, body))

    def open(self, blob: bytes, context: EnvelopeContext) -> bytes:
        """The plaintext of a message of this stream (with or without the key in front);
        `IntegrityError` when it was altered, belongs to another stream, or was sealed
        for another context."""
        blob = bytes(blob)
        magic = blob[:4]
        if magic == STREAM_MAGIC:
            header_end = _STREAM_HEADER.size
            if len(blob) < header_end + NONCE_BYTES + TAG_BYTES:
                raise IntegrityError("the sealed stream message is truncated")
            _magic, fmt, stream_id = _STREAM_HEADER.unpack_from(blob)
        elif magic == STREAM_KEY_MAGIC and len(blob) >= _STREAM_KEY_HEADER.size:
            _magic, fmt, _version, wrapped_len = _STREAM_KEY_HEADER.unpack_from(blob)
            header_end = _STREAM_KEY_HEADER.size + wrapped_len + STREAM_ID_BYTES
            if len(blob) < header_end + NONCE_BYTES + TAG_BYTES:
                raise IntegrityError("the sealed stream message is truncated")
            stream_id = blob[header_end - STREAM_ID_BYTES : header_end]
        else:
            raise IntegrityError("this is not a sealed stream message")
        if fmt != FORMAT_VERSION:
            raise IntegrityError(
                f"the sealed data has format {fmt}; this gateway opens format {FORMAT_VERSION}"
            )
        if stream_id != self.stream_id:
            raise IntegrityError("the sealed stream message belongs to another stream")
        return self._decrypt(blob, header_end, context)

    def _decrypt(self, blob: bytes, header_end: int, context: EnvelopeContext) -> bytes:
        header = blob[:header_end]
        nonce = blob[header_end : header_end + NONCE_BYTES]
        try:
            plaintext: bytes = self._aead.decrypt(
                nonce, blob[header_end + NONCE_BYTES :], self._associated_data(header, context)
            )
        except InvalidTag:
            raise IntegrityError(
                "the sealed stream message does not open: it was altered, or it belongs to "
                "another stream, tenant, purpose or subject"
            ) from None
        return plaintext

    def _associated_data(self, header: bytes, context: EnvelopeContext) -> bytes:
        bound = canonical_context(
            {
                "format": str(FORMAT_VERSION),
                "key_version": str(self.key_version),
                "stream": self.stream_id.hex(),
                **context.kms_context(),
            }
        )
        return b"fabric.stream/1\x00" + struct.pack(">I", len(header)) + header + bound


def _check_stream_id(stream_id: bytes) -> None:
    if not isinstance(stream_id, bytes) or len(stream_id) != STREAM_ID_BYTES:
        raise InvalidArgument(f"a stream id is {STREAM_ID_BYTES} bytes")
