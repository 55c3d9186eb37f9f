"""Messaging between the platform and runtime replicas: the bus and platform events.

`Bus` (publish, subscribe with queue groups, request/reply) has two backends:
`InProcessBus` (embedded default) and `NatsBus` (production). `EventLog` carries
`PlatformEvent`s durably: `InProcessEventLog`, and `JetStreamEventLog` on NATS.
The NATS classes are imported lazily, so the embedded default does not need nats-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric.messaging.bus import (
    DEFAULT_MAX_PAYLOAD,
    Bus,
    Handler,
    Headers,
    Message,
    Subscription,
    event_subject,
    events_filter,
    subject_for,
    subject_matches,
    subject_token,
)
from fabric.messaging.events import (
    DEFAULT_REDELIVERY,
    EventConsumer,
    EventHandler,
    EventKind,
    EventLog,
    IdempotentHandler,
    PlatformEvent,
    RedeliveryPolicy,
)
from fabric.messaging.inprocess import InProcessBus, InProcessEventLog

if TYPE_CHECKING:
    from fabric.messaging.nats_bus import JetStreamEventLog, NatsBus

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_REDELIVERY",
    "Bus",
    "EventConsumer",
    "EventHandler",
    "EventKind",
    "EventLog",
    "Handler",
    "Headers",
    "IdempotentHandler",
    "InProcessBus",
    "InProcessEventLog",
    "JetStreamEventLog",
    "Message",
    "NatsBus",
    "PlatformEvent",
    "RedeliveryPolicy",
    "Subscription",
    "event_subject",
    "events_filter",
    "subject_for",
    "subject_matches",
    "subject_token",
]

_LAZY = {"NatsBus", "JetStreamEventLog"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fabric.messaging import nats_bus

        return getattr(nats_bus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
