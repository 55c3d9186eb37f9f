"""The wire format of queries over the bus: frames, subjects, the request, the END and
ERROR bodies (the protocol is described in `fabric.messaging.query_rpc`)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from fabric.context import Role
from fabric.errors import ALL_ERRORS, FabricError, InternalError, InvalidArgument
from fabric.messaging.bus import SUBJECT_ROOT, subject_for, subject_token
from fabric.observability.access import request_id_of
from fabric.proto_values import params_from_proto, params_to_proto
from fabric.query.engine import PROTOCOLS, QueryRequest
from fabric.query.runs import Summary
from fabric.security.kms import Kms, LocalKeyRing
from fabric.v1 import query_pb2 as pb

PROTOCOL_VERSION = 2

QUERY_KIND = "query"
REPLY_KIND = "reply"
CONTROL_KIND = "control"

FRAME_HEADER = struct.Struct(">2sBB16sI")
"""magic, version, kind, request id, seq: what precedes a frame's body."""
RECORD_HEADER = struct.Struct(">I")
"""The length prefix of the JSON head in a REQUEST and an END body."""
_MAGIC = b"FQ"
_OFFLOAD_BYTES = 64 * 1024
_ERRORS_BY_CODE: dict[str, type[FabricError]] = {cls.code: cls for cls in ALL_ERRORS}


class FrameKind(IntEnum):
    REQUEST = 1
    ACCEPT = 2
    CHUNK = 3
    HEARTBEAT = 4
    END = 5
    ERROR = 6
    ACK = 7
    CANCEL = 8


@dataclass(frozen=True, slots=True)
class Frame:
    """One protocol message, as it is inside the seal."""

    kind: FrameKind
    request_id: bytes
    seq: int = 0
    body: bytes = b""

    def encode(self) -> bytes:
        return (
            FRAME_HEADER.pack(_MAGIC, PROTOCOL_VERSION, self.kind, self.request_id, self.seq)
            + self.body
        )

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """Parse an opened payload; `InvalidArgument` if it is not a frame of this
        protocol (the caller counts it as malformed)."""
        if len(data) < FRAME_HEADER.size:
            raise InvalidArgument("bus frame is truncated")
        magic, version, kind, request_id, seq = FRAME_HEADER.unpack_from(data)
        if magic != _MAGIC or version != PROTOCOL_VERSION:
            raise InvalidArgument("bus frame has an unknown magic or version")
        try:
            frame_kind = FrameKind(kind)
        except ValueError:
            raise InvalidArgument("bus frame has an unknown kind") from None
        return cls(frame_kind, request_id, seq, data[FRAME_HEADER.size :])


def query_subject(tenant: str, stage: str) -> str:
    """Where a tenant's queries for a stage are sent: `fabric.<tenant>.<stage>.query`."""
    return subject_for(QUERY_KIND, tenant, stage)


def stage_query_filter(stage: str) -> str:
    """Every tenant's query subject of a stage: `fabric.*.<stage>.query`."""
    return f"{SUBJECT_ROOT}.*.{subject_token(stage, 'stage')}.{QUERY_KIND}"


def reply_subject(tenant: str, stage: str, inbox: str, request_id: bytes) -> str:
    """Where one request's replies go: `fabric.<tenant>.<stage>.reply.<inbox>.<request id>`,
    `inbox` naming the forwarder that waits for them (`reply_filter`)."""
    return subject_for(REPLY_KIND, tenant, stage, inbox, request_id.hex())


def reply_filter(inbox: str) -> str:
    """Every reply subject of one forwarder's inbox, whatever the tenant and stage."""
    return f"{SUBJECT_ROOT}.*.*.{REPLY_KIND}.{subject_token(inbox, 'inbox')}.*"


def request_of_reply(subject: str) -> bytes | None:
    """The request id a reply subject ends with; None when it does not end with one."""
    try:
        request_id = bytes.fromhex(subject.rsplit(".", 1)[-1])
    except ValueError:
        return None
    return request_id if len(request_id) == 16 else None


def control_subject(tenant: str, stage: str, replica_id: str) -> str:
    return subject_for(CONTROL_KIND, tenant, stage, replica_id)


def encode_json(value: Any) -> bytes:
    """A frame body as compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    """A frame body's JSON object; `InvalidArgument` if it is not one."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgument("bus frame body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("bus frame body is not a JSON object")
    return value


def end_body(summary: Summary, tail: bytes) -> bytes:
    """An END frame's body: the summary as JSON (length-prefixed), then the last bytes
    of the result, so a small result travels in the END frame alone."""
    head = encode_json(
        {
            "rows": summary.rows,
            "truncated": summary.truncated,
            "from_cache": summary.from_cache,
            "elapsed_us": summary.elapsed_us,
        }
    )
    return b"".join((RECORD_HEADER.pack(len(head)), head, tail))


def split_end(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The summary fields and the last result bytes of an END frame's body;
    `InvalidArgument` when it is not one."""
    if len(body) < RECORD_HEADER.size:
        raise InvalidArgument("bus END frame is truncated")
    (head_len,) = RECORD_HEADER.unpack_from(body)
    end = RECORD_HEADER.size + head_len
    if len(body) < end:
        raise InvalidArgument("bus END frame is truncated")
    return decode_json(body[RECORD_HEADER.size : end]), body[end:]


def error_body(error: FabricError, retryable: bool = False) -> bytes:
    """An ERROR frame's body: code, message, SQLSTATE and whether to retry elsewhere."""
    return encode_json(
        {
            "code": error.code,
            "message": error.message,
            "sqlstate": error.sqlstate,
            "retry_after": error.retry_after,
            "retryable": retryable,
        }
    )


def error_from_body(body: bytes) -> tuple[FabricError, bool]:
    """The error an ERROR frame carries (unknown codes become InternalError), and
    whether it may be retried."""
    data = decode_json(body)
    cls = _ERRORS_BY_CODE.get(str(data.get("code")), InternalError)
    sqlstate = data.get("sqlstate")
    retry_after = data.get("retry_after")
    error = cls(
        str(data.get("message") or cls.code),
        sqlstate=sqlstate if isinstance(sqlstate, str) else None,
        retry_after=(
            float(retry_after)
            if isinstance(retry_after, int | float) and not isinstance(retry_after, bool)
            else None
        ),
    )
    return error, bool(data.get("retryable"))


def offload_policy(kms: Kms) -> Callable[[int], bool]:
    """Whether a step that asks the KMS (starting or accepting a stream) should leave the
    event loop: always for a remote KMS (a round trip), for large payloads with the
    local ring."""
    local = isinstance(kms, LocalKeyRing)
    return lambda size: not local or size >= _OFFLOAD_BYTES


def offload_large(size: int) -> bool:
    """Whether sealing or opening a payload under a stream's key (no KMS call) should
    leave the event loop: only a large one."""
    return size >= _OFFLOAD_BYTES


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A REQUEST frame's body: the JSON head (query, identity, timing, flow control) and
    the parameters as a protobuf `ExecuteRequest`."""

    request_id: bytes
    tenant: str
    stage: str
    role: str
    principal: str
    query: QueryRequest
    timeout: float | None
    sent_at: float
    reply: str
    window: int
    heartbeat: float
    stall: float
    call_id: str = ""
    """The request id of the call the platform forwards (its access-log line and the
    replica's name the same call)."""

    def encode(self) -> bytes:
        head = encode_json(
            {
                "connection": self.query.connection,
                "sql": self.query.sql,
                "cache_ttl": self.query.cache_ttl,
                "max_rows": self.query.max_rows,
                "max_bytes": self.query.max_bytes,
                "protocol": self.query.protocol,
                "role": self.role,
                "principal": self.principal,
                "timeout": self.timeout,
                "sent_at": self.sent_at,
                "reply": self.reply,
                "window": self.window,
                "heartbeat": self.heartbeat,
                "stall": self.stall,
                "call_id": self.call_id,
            }
        )
        params = pb.ExecuteRequest(params=params_to_proto(self.query.params))
        encoded: bytes = params.SerializeToString()
        return RECORD_HEADER.pack(len(head)) + head + encoded

    @classmethod
    def decode(cls, frame: Frame, tenant: str, stage: str) -> WireRequest:
        body = frame.body
        if len(body) < RECORD_HEADER.size:
            raise InvalidArgument("query request is truncated")
        (head_len,) = RECORD_HEADER.unpack_from(body)
        if len(body) < RECORD_HEADER.size + head_len:
            raise InvalidArgument("query request is truncated")
        head = decode_json(body[RECORD_HEADER.size : RECORD_HEADER.size + head_len])
        params = pb.ExecuteRequest()
        try:
            params.ParseFromString(body[RECORD_HEADER.size + head_len :])
        except Exception:
            raise InvalidArgument("query request parameters do not parse") from None
        try:
            max_rows = head.get("max_rows")
            max_bytes = head.get("max_bytes")
            timeout = head.get("timeout")
            protocol = str(head.get("protocol", "grpc"))
            if protocol not in PROTOCOLS:
                raise ValueError("unknown protocol")
            query = QueryRequest(
                connection=str(head["connection"]),
                sql=str(head["sql"]),
                params=params_from_proto(params.params),
                cache_ttl=float(head["cache_ttl"]),
                max_rows=None if max_rows is None else int(max_rows),
                max_bytes=None if max_bytes is None else int(max_bytes),
                protocol=protocol,
            )
            request = cls(
                frame.request_id,
                tenant,
                stage,
                Role(head["role"]).value,
                str(head["principal"]),
                query,
                None if timeout is None else float(timeout),
                float(head["sent_at"]),
                str(head["reply"]),
                int(head["window"]),
                float(head["heartbeat"]),
                float(head["stall"]),
                request_id_of(str(head.get("call_id", ""))),
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument("query request head is malformed") from None
        tokens = request.reply.split(".")
        if len(tokens) != 6 or request.reply != reply_subject(
            tenant, stage, tokens[4], frame.request_id
        ):
            raise InvalidArgument("query request names a reply subject not its own")
        if request.window < 1 or request.heartbeat <= 0 or request.stall <= 0:
            raise InvalidArgument("query request has a non-positive window or interval")
        return request
