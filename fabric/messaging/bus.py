"""The bus contract: publish, subscribe (with queue groups), request/reply, subject names.

Two backends implement `Bus`: `InProcessBus` (the embedded default) and `NatsBus`
(production). Both give the same answers to the same calls, and both refuse rather than
drop: a message that cannot be accepted is an error the caller sees.

    error                     when
    SourceUnavailable         the bus is closed or reconnecting (publish, request)
    NoResponders              (a SourceUnavailable) nobody subscribes to a request's
                              subject
    DeadlineExceeded          a request got no reply in time
    ResourceExhausted         payload plus headers exceed `max_payload` (nothing is sent;
                              callers split large results into chunks themselves)
    InvalidArgument           a malformed subject, subject token or header

Subjects are namespaced by tenant and stage (`subject_for`); tokens that come from user
input are validated so that they can never add a wildcard or an extra level.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fabric.errors import InvalidArgument, ResourceExhausted

SUBJECT_ROOT = "fabric"
"""First token of every subject Fabric publishes on."""

EVENTS_TOKEN = "events"
"""Second token of platform-event subjects (`fabric.events.<tenant>.<kind>`); reserved, so
it can never be a tenant name."""

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""NATS's default `max_payload` (1 MiB); the in-process bus uses the same by default."""

MAX_TOKEN_LENGTH = 128

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_KEY = re.compile(r"[!-9;-~]+")  # printable ASCII without ':' (RFC 7230 field-name)
_HEADER_FRAME = len(b"NATS/1.0\r\n") + len(b"\r\n")

Headers = Mapping[str, str]
Responder = Callable[[bytes, "Headers | None"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message. `respond` answers a request (it publishes to the reply
    subject); for a plain publish there is no reply subject and `respond` refuses."""

    subject: str
    payload: bytes
    headers: Headers = field(default_factory=dict)
    reply_subject: str | None = None
    _responder: Responder | None = field(default=None, repr=False, compare=False)

    async def respond(self, payload: bytes, headers: Headers | None = None) -> None:
        """Send the reply to the requester; errors as `Bus.publish`."""
        if self._responder is None or not self.reply_subject:
            raise InvalidArgument(
                f"a message on {self.subject!r} has no reply subject; only requests can be answered"
            )
        await self._responder(payload, headers)


Handler = Callable[[Message], Awaitable[None]]
"""A subscriber's callback. Messages of one subscription are handled one at a time, in
order; an exception is logged (without payload) and the next message is handled."""


@runtime_checkable
class Subscription(Protocol):
    """A live subscription; `unsubscribe` stops delivery (idempotent)."""

    @property
    def subject(self) -> str: ...

    @property
    def queue(self) -> str | None: ...

    async def unsubscribe(self) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """Messages between the platform and runtime replicas (see the module docstring for
    the errors). Implementations: `InProcessBus`, `NatsBus`."""

    @property
    def max_payload(self) -> int:
        """Largest payload plus encoded headers, in bytes, that one message may carry."""
        ...

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        """Publish one message; raises when it cannot be accepted, never drops it quietly."""
        ...

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        """Deliver messages on `subject` (wildcards `*` and `>` allowed) to `handler`.
        Subscribers sharing a `queue` name form a group: each message goes to exactly one
        member of the group."""
        ...

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: Headers | None = None,
    ) -> bytes:
        """Send a request and return the first reply's payload."""
        ...

    async def close(self) -> None:
        """Stop every subscription and refuse further calls (idempotent)."""
        ...


def subject_token(value: str, what: str = "subject token") -> str:
    """Return `value` if it is safe as one subject token: letters, digits, `_` and `-`,
    at most 128 characters. Anything else (a dot, a wildcard, whitespace, `$`) would
    change which subjects a message reaches, so it is refused."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} cannot be used on the bus: use letters, digits, '_' or '-'"
        )
    if len(value) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_TOKEN_LENGTH} characters")
    return value


def _tenant_token(tenant: str) -> str:
    subject_token(tenant, "tenant")
    if tenant == EVENTS_TOKEN:
        raise InvalidArgument(f"tenant name {EVENTS_TOKEN!r} is reserved on the bus")
    return tenant


def subject_for(kind: str, tenant: str, stage: str, *parts: str) -> str:
    """The subject of `kind` messages of one tenant's stage:
    `fabric.<tenant>.<stage>.<kind>[.<part>...]`, e.g. `fabric.acme.production.query`."""
    tokens = [
        SUBJECT_ROOT,
        _tenant_token(tenant),
        subject_token(stage, "stage"),
        subject_token(kind, "subject kind"),
        *(subject_token(part, "subject part") for part in parts),
    ]
    return ".".join(tokens)


def event_subject(kind: str, tenant: str) -> str:
    """The subject of a platform event: `fabric.events.<tenant>.<kind>`; `kind` may have
    dotted levels (`connection.updated`)."""
    kind_tokens = [subject_token(token, "event kind") for token in kind.split(".")]
    return ".".join([SUBJECT_ROOT, EVENTS_TOKEN, _tenant_token(tenant), *kind_tokens])


def events_filter(tenant: str | None = None) -> str:
    """The subject filter for all platform events, or those of one tenant."""
    if tenant is None:
        return f"{SUBJECT_ROOT}.{EVENTS_TOKEN}.>"
    return f"{SUBJECT_ROOT}.{EVENTS_TOKEN}.{_tenant_token(tenant)}.>"


def validate_subject(subject: str, *, wildcards: bool) -> str:
    """Check the shape of a whole subject: non-empty tokens of printable characters
    without whitespace; `*` (one token) and a final `>` only when `wildcards`."""
    if not isinstance(subject, str) or not subject:
        raise InvalidArgument("a bus subject must be a non-empty string")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token or any(ch.isspace() or not ch.isprintable() for ch in token):
            raise InvalidArgument(f"bus subject {subject!r} is malformed")
        if token in ("*", ">"):
            if not wildcards:
                raise InvalidArgument(
                    f"bus subject {subject!r} has a wildcard; only subscriptions may use one"
                )
            if token == ">" and index != len(tokens) - 1:
                raise InvalidArgument(f"'>' must be the last token of {subject!r}")
        elif "*" in token or ">" in token:
            raise InvalidArgument(f"bus subject {subject!r} has a wildcard inside a token")
    return subject


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is exactly one token, a final `>` is one or more tokens."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(subject_tokens) == len(pattern_tokens)


def validate_queue(queue: str | None) -> str | None:
    """A queue group name is one token (`None` means no group)."""
    if queue is None:
        return None
    return subject_token(queue, "queue group")


def encoded_size(payload: bytes, headers: Headers | None) -> int:
    """Bytes the message occupies against `max_payload`: payload plus the encoded header
    block (`NATS/1.0` line, `key: value` lines, blank line), as the server counts them."""
    if not headers:
        return len(payload)
    size = _HEADER_FRAME
    for key, value in headers.items():
        size += len(key.encode()) + 2 + len(value.encode()) + 2
    return len(payload) + size


def check_headers(headers: Headers | None) -> dict[str, str]:
    """Refuse header keys or values the wire cannot carry as given (no silent rewrite)."""
    if not headers:
        return {}
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_KEY.fullmatch(key):
            raise InvalidArgument(f"bus header name {key!r} is not a valid header field name")
        if not isinstance(value, str) or "\r" in value or "\n" in value or value != value.strip():
            raise InvalidArgument(
                f"bus header {key!r} has a value with line breaks or surrounding whitespace"
            )
        checked[key] = value
    return checked


def check_payload(subject: str, payload: bytes, headers: Headers | None, max_payload: int) -> None:
    """Refuse a message larger than `max_payload` before anything is sent."""
    if not isinstance(payload, bytes | bytearray):
        raise InvalidArgument("a bus payload must be bytes")
    size = encoded_size(payload, headers)
    if size > max_payload:
        raise ResourceExhausted(
            f"message on {subject!r} is {size} bytes with headers, over the bus maximum of "
            f"{max_payload} bytes; split it into chunks of at most max_payload bytes"
        )


def checked_outgoing(
    subject: str,
    payload: bytes,
    headers: Headers | None,
    max_payload: int,
    *,
    timeout: float | None = None,
) -> dict[str, str]:
    """What every bus checks before a message leaves, in this order: a concrete subject,
    a positive `timeout` when the message is a request, headers the wire can carry, a
    size within `max_payload`. Returns the checked headers."""
    validate_subject(subject, wildcards=False)
    if timeout is not None and timeout <= 0:
        raise InvalidArgument("a request timeout must be positive")
    checked = check_headers(headers)
    check_payload(subject, payload, checked, max_payload)
    return checked
