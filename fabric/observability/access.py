"""The access log: one structured line per call, and each call's request id.

Every door opens a `CallRecord` for each call (`AccessLog.call`: the gRPC and Flight SQL
servers through `fabric.api.access`; any other door, a REST app say, calls it the same
way). The record is the call's own (a context variable of its task), so the layers below
fill in what they learn without being handed it: the engine notes who asked (principal,
tenant, stage), the connection, the statement's fingerprint, rows, bytes of Arrow data
sent and whether the result came from the cache. When the call ends, one line goes to
the `fabric.access` logger (unless FABRIC_ACCESS_LOG=false)::

    {"message": "access request_id=9f0c... (the fields as key=value, for the text
     format)", "request_id": "9f0c...", "protocol": "grpc",
     "method": "/fabric.v1.QueryService/Execute", "status": "OK", "principal": "app-1",
     "tenant": "acme", "stage": "production", "connection": "crm",
     "fingerprint": "5d1e...", "rows": 42, "bytes": 8192, "from_cache": false,
     "duration_ms": 3.2}

Never a parameter value, a SQL text (not even masked: the fingerprint names the
statement) or a row. The request id is the caller's `x-request-id` when it sent a valid
one (`REQUEST_ID`: 1 to 128 letters, digits, `.`, `_`, `:`, `-`; anything else is
replaced, never echoed), else a new one; the door returns it with the result and with
every error.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "REQUEST_ID_HEADER",
    "AccessLog",
    "CallRecord",
    "current_call",
    "request_id_of",
]

REQUEST_ID_HEADER = "x-request-id"
"""The metadata key (gRPC) or header (HTTP) that carries a call's request id both ways."""
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A request id a caller may choose (a UUID, a trace id, a short tag)."""

access_logger = logging.getLogger("fabric.access")

_CALL: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "fabric_call", default=None
)


def request_id_of(offered: str | None) -> str:
    """The caller's request id when it is valid, else a new one."""
    if offered and REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


@dataclass(slots=True)
class CallRecord:
    """What one call did, filled in as it runs; written as one access-log line."""

    request_id: str
    protocol: str
    method: str
    status: str = "OK"
    """gRPC status name, or the door's own (an HTTP status for a REST door)."""
    principal: str = ""
    tenant: str = ""
    stage: str = ""
    connection: str = ""
    fingerprint: str = ""
    rows: int = 0
    bytes: int = 0
    """Bytes of Arrow IPC data sent."""
    from_cache: bool = False
    started: float = field(default_factory=time.perf_counter)

    def identify(self, principal: str, tenant: str, stage: str) -> None:
        self.principal, self.tenant, self.stage = principal, tenant, stage

    def fields(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "protocol": self.protocol,
            "method": self.method,
            "status": self.status,
            "principal": self.principal,
            "tenant": self.tenant,
            "stage": self.stage,
            "connection": self.connection,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "bytes": self.bytes,
            "from_cache": self.from_cache,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }


def current_call() -> CallRecord | None:
    """The record of the call this task serves, if a door opened one."""
    return _CALL.get()


class AccessLog:
    """Opens each call's record and writes its line when the call ends."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        if enabled:
            # Its lines are written whatever FABRIC_LOG_LEVEL says of the others.
            access_logger.setLevel(logging.INFO)

    @contextmanager
    def call(self, protocol: str, method: str, offered_id: str | None) -> Iterator[CallRecord]:
        """The record of one call for the block's duration (the current call of the
        task); its line is written when the block ends. A door sets `status` when the
        call fails (an exception leaving the block without one is logged as UNKNOWN)."""
        record = CallRecord(request_id_of(offered_id), protocol, method)
        token = _CALL.set(record)
        try:
            yield record
        except BaseException:
            if record.status == "OK":
                record.status = "UNKNOWN"
            raise
        finally:
            # A streaming handler's generator may be finalized in another task's
            # context (a client that left early); the variable then ends with its task.
            with contextlib.suppress(ValueError):
                _CALL.reset(token)
            if self.enabled:
                fields = record.fields()
                # The text format shows the message only: it carries the fields too.
                line = " ".join(f"{key}={value}" for key, value in fields.items())
                access_logger.info("access %s", line, extra=fields)
