"""Sealed bus payloads: every byte of a query message crosses the bus encrypted.

`BusSealer` wraps the KMS envelope (`fabric.security.envelope`) for bus messages. The
envelope context binds each message to

    tenant    the tenant whose data it is (also the subject's second token)
    purpose   what it is: ``query-request``, ``query-reply`` or ``query-control``
    subject   ``<stage>|<bus subject>``: the stage and the exact subject it was sent on

so a message copied to another tenant's or stage's subject, to another request's reply
inbox, or from a reply to a request subject does not open.

A query's messages form one stream (`start_stream`, `accept_stream`, `seal_in`,
`open_in`): one data key for the request, its reply frames and its control frames,
bound in the KMS to the tenant, the stage and the request id (`STREAM_PURPOSE`); each
message keeps its own context as above. So a query costs one data-key request and one
unwrap (a Vault transit round trip each), not one per message. A message that does not open,
is larger than the limit or is otherwise refused is *counted* by reason (`counters`,
`snapshot` for metrics) and logged by subject, reason and size only, never by content.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from enum import StrEnum

from fabric.errors import FabricError, IntegrityError, InvalidArgument, ResourceExhausted
from fabric.messaging.bus import DEFAULT_MAX_PAYLOAD, SUBJECT_ROOT
from fabric.security.envelope import (
    EnvelopeContext,
    StreamCipher,
    open_sealed,
    seal,
    stream_id_of,
    stream_key_context,
)
from fabric.security.kms import Kms

log = logging.getLogger(__name__)

SEAL_MARGIN = 256
"""Bytes kept free beyond the measured envelope overhead (a KMS may return wrapped keys
of slightly varying length, e.g. Vault transit after a rotation)."""


class Purpose(StrEnum):
    """The envelope purpose of each kind of query message."""

    QUERY_REQUEST = "query-request"
    """Forwarder -> replica: the query (SQL, parameters, identity, deadline)."""
    QUERY_REPLY = "query-reply"
    """Replica -> forwarder: acceptance, result chunks, heartbeat, summary, error."""
    QUERY_CONTROL = "query-control"
    """Forwarder -> replica: flow-control credit and cancellation."""
    ADMIN_REQUEST = "admin-request"
    """Platform -> replicas: list the running queries, cancel one (`admin_rpc`)."""
    ADMIN_REPLY = "admin-reply"
    """Replica -> platform: its running queries, or the outcome of a cancellation."""


STREAM_PURPOSE = "query-stream"
"""The KMS purpose of a query stream's data key."""


class RejectReason(StrEnum):
    """Why an incoming bus message was refused (the label of the rejection counter)."""

    INTEGRITY = "integrity"
    """Does not open: altered, truncated, or sealed for another tenant, stage, subject or
    purpose (a replay elsewhere looks exactly like a tampering)."""
    OVERSIZED = "oversized"
    """Larger than the receiver's limit; refused before any decryption."""
    MALFORMED = "malformed"
    """Opened, but its content is not a message of the protocol."""
    EXPIRED = "expired"
    """A request past its deadline or older than the replay window."""
    DUPLICATE = "duplicate"
    """A request id already seen (a replay to the same subject)."""
    UNEXPECTED = "unexpected"
    """On a subject this receiver does not serve (a tenant it is not configured for)."""


def envelope_context(tenant: str, stage: str, subject: str, purpose: Purpose) -> EnvelopeContext:
    """The envelope context of one bus message; refuses a subject that is not the
    tenant's and stage's own (`fabric.<tenant>.<stage>....`)."""
    tokens = subject.split(".")
    if len(tokens) < 4 or tokens[0] != SUBJECT_ROOT or tokens[1] != tenant or tokens[2] != stage:
        raise InvalidArgument(
            f"bus subject {subject!r} is not in tenant {tenant!r}'s stage {stage!r}"
        )
    return EnvelopeContext(
        tenant=tenant, purpose=Purpose(purpose).value, subject=f"{stage}|{subject}"
    )


class BusSealer:
    """Seals and opens bus payloads with a `Kms`, counting what it refuses.

    `max_message_bytes` is the largest sealed message `open` accepts (default: NATS's
    1 MiB default `max_payload`); anything larger is refused unopened. Thread-safe: the
    counters are guarded, sealing may run in worker threads.
    """

    def __init__(self, kms: Kms, *, max_message_bytes: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_message_bytes < 1:
            raise InvalidArgument("max_message_bytes must be positive")
        self._kms = kms
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._sealed = 0
        self._opened = 0
        self._rejected: dict[RejectReason, int] = dict.fromkeys(RejectReason, 0)
        probe = EnvelopeContext(tenant="probe", purpose="probe", subject="probe")
        probe_stream = StreamCipher.start(kms, bytes(16), probe)
        self.overhead = (
            max(len(seal(kms, b"", probe)), len(probe_stream.seal(b"", probe, with_key=True)))
            + SEAL_MARGIN
        )
        """Bytes sealing adds to a payload, with a margin: plan chunk sizes with it."""

    def seal(
        self, payload: bytes, *, tenant: str, stage: str, subject: str, purpose: Purpose
    ) -> bytes:
        """Encrypt `payload` for `subject` (which must be the tenant's and stage's)."""
        blob = seal(self._kms, payload, envelope_context(tenant, stage, subject, purpose))
        with self._lock:
            self._sealed += 1
        return blob

    def open(
        self, blob: bytes, *, tenant: str, stage: str, subject: str, purpose: Purpose
    ) -> bytes:
        """The plaintext of a message received on `subject`. Refused (counted, logged
        without content): `ResourceExhausted` over the size limit, `IntegrityError` when
        it does not open with this context."""
        self._check_size(blob, subject)
        try:
            context = envelope_context(tenant, stage, subject, purpose)
            plaintext = open_sealed(self._kms, blob, context)
        except IntegrityError as error:
            raise self.reject(RejectReason.INTEGRITY, subject, len(blob), error) from None
        except InvalidArgument as error:
            raise self.reject(RejectReason.MALFORMED, subject, len(blob), error) from None
        with self._lock:
            self._opened += 1
        return plaintext

    # -- streams -------------------------------------------------------------------------

    def start_stream(self, *, tenant: str, stage: str, stream_id: bytes) -> StreamCipher:
        """A new query stream's cipher: one data key from the KMS (a round trip with Vault
        transit), bound to the tenant, the stage and `stream_id` (the request id)."""
        return StreamCipher.start(
            self._kms, stream_id, stream_key_context(tenant, STREAM_PURPOSE, stage, stream_id)
        )

    def seal_in(
        self,
        cipher: StreamCipher,
        payload: bytes,
        *,
        tenant: str,
        stage: str,
        subject: str,
        purpose: Purpose,
        with_key: bool = False,
    ) -> bytes:
        """Encrypt `payload` for `subject` under the stream's key (no KMS call); `with_key`
        for the message that starts the stream."""
        context = envelope_context(tenant, stage, subject, purpose)
        blob = cipher.seal(payload, context, with_key=with_key)
        with self._lock:
            self._sealed += 1
        return blob

    def accept_stream(
        self, blob: bytes, *, tenant: str, stage: str, subject: str, purpose: Purpose
    ) -> tuple[StreamCipher, bytes]:
        """The cipher of the stream a received message starts (one unwrap by the KMS),
        and the message's plaintext; refused (counted, logged without content) as `open`
        refuses."""
        self._check_size(blob, subject)
        try:
            context = envelope_context(tenant, stage, subject, purpose)
            stream_id = stream_id_of(blob)
            key_context = stream_key_context(tenant, STREAM_PURPOSE, stage, stream_id)
            cipher, plaintext = StreamCipher.accept(self._kms, blob, key_context, context)
        except IntegrityError as error:
            raise self.reject(RejectReason.INTEGRITY, subject, len(blob), error) from None
        except InvalidArgument as error:
            raise self.reject(RejectReason.MALFORMED, subject, len(blob), error) from None
        with self._lock:
            self._opened += 1
        return cipher, plaintext

    def open_in(
        self,
        cipher: StreamCipher,
        blob: bytes,
        *,
        tenant: str,
        stage: str,
        subject: str,
        purpose: Purpose,
    ) -> bytes:
        """The plaintext of a message of the stream received on `subject` (no KMS call);
        refused (counted, logged without content) as `open` refuses."""
        self._check_size(blob, subject)
        try:
            context = envelope_context(tenant, stage, subject, purpose)
            plaintext = cipher.open(blob, context)
        except IntegrityError as error:
            raise self.reject(RejectReason.INTEGRITY, subject, len(blob), error) from None
        except InvalidArgument as error:
            raise self.reject(RejectReason.MALFORMED, subject, len(blob), error) from None
        with self._lock:
            self._opened += 1
        return plaintext

    def _check_size(self, blob: bytes, subject: str) -> None:
        if len(blob) > self.max_message_bytes:
            raise self.reject(
                RejectReason.OVERSIZED,
                subject,
                len(blob),
                ResourceExhausted(
                    f"bus message of {len(blob)} bytes is over the limit of "
                    f"{self.max_message_bytes} bytes; it was refused unopened"
                ),
            )

    def reject(
        self, reason: RejectReason, subject: str, size: int, error: FabricError | None = None
    ) -> FabricError:
        """Count a refused message and log it by subject, reason and size (never its
        content); returns the error to raise."""
        with self._lock:
            self._rejected[reason] += 1
            count = self._rejected[reason]
        # The first of each reason at WARNING, then every 100th: a flood of forged
        # messages must not flood the log too.
        level = logging.WARNING if count == 1 or count % 100 == 0 else logging.DEBUG
        log.log(
            level,
            "bus message on %s rejected (%s, %d bytes; %d so far)",
            subject,
            reason.value,
            size,
            count,
        )
        return (
            error
            if error is not None
            else IntegrityError(f"bus message on {subject!r} was rejected ({reason.value})")
        )

    @property
    def counters(self) -> Mapping[str, int]:
        """Messages sealed, opened, and rejected by reason (`rejected_<reason>`)."""
        with self._lock:
            values = {"sealed": self._sealed, "opened": self._opened}
            values.update({f"rejected_{r.value}": n for r, n in self._rejected.items()})
        return values

    @property
    def rejected(self) -> int:
        """Messages rejected for any reason."""
        with self._lock:
            return sum(self._rejected.values())

    def snapshot(self, prefix: str = "bus_") -> dict[str, float]:
        """The counters as metric figures (`bus_sealed`, `bus_rejected_integrity`, ...)."""
        return {f"{prefix}{name}": float(value) for name, value in self.counters.items()}
