"""Queries over the bus: runtime replicas that serve them, and the gateway's forwarder.

`RuntimeReplica` subscribes, in a queue group, to its stage's query subject of every
tenant it serves, so each request is served by exactly one replica of the stage and more
replicas mean more capacity. `BusQueryForwarder.execute` yields what the gRPC servicer
takes from `QueryEngine.execute` (the bytes of the Arrow IPC stream, then one
`Summary`), so the servicer can drive either.

Subjects (`<t>` tenant, `<s>` stage; all built with `subject_for`)::

    fabric.<t>.<s>.query                requests; replicas subscribe `fabric.*.<s>.query`
                                        (every tenant) or one subject per tenant, queue
                                        group `fabric-runtime-<s>`
    fabric.<t>.<s>.reply.<inbox>.<request id>
                                        one request's reply stream; a forwarder receives
                                        the replies of all its requests on one
                                        subscription `fabric.*.*.reply.<inbox>.*`
    fabric.<t>.<s>.control.<replica>    credit and cancellation for a replica's requests

Protocol. Every payload is one sealed blob (`BusSealer`; tenant, stage, exact subject
and purpose bound as context); the only header is a REQUEST's W3C `traceparent` while
tracing is on (`fabric.observability.tracing`: random trace and span ids), so nothing
readable crosses the bus but the subject names and the ids they already carry. A query's messages
are one stream under one data key (`fabric.security.envelope.StreamCipher`): the
forwarder asks the KMS for it once and sends it wrapped in the REQUEST; the replica
unwraps it once; every other message of the query (replies, acknowledgements,
cancellation) is only AES-GCM under that key. With Vault transit that is one data-key
request and one decrypt per query, not one per chunk. Inside the seal a frame is::

    magic b"FQ" | version u8 (2) | kind u8 | request id 16 bytes | seq u32 | body

1. The forwarder registers the request with its inbox, then sends REQUEST with
   `Bus.request` (so "no responders" is detected at once). The body is a JSON head (connection, SQL,
   cache lifetime, row cap, role, principal, time left, send time, reply inbox, window,
   heartbeat and stall intervals) and the parameters as a protobuf `ExecuteRequest`.
2. The replica answers the request with END when the whole result is there before
   anything else had to go out and fits one frame (a small result: one reply), with
   ERROR (retryable when busy or shutting down), or else with ACCEPT (its replica id),
   at the latest `linger` seconds after the request came, and then streams on the
   inbox: CHUNK frames numbered 0, 1, 2...
   whose bodies, concatenated, are the result's Arrow IPC stream, cut wherever the
   bus's `max_payload` falls; HEARTBEAT while the source is quiet; and finally END
   (the summary, then the last bytes of the result, so a small result is one frame;
   `seq` = number of chunks before it) or ERROR (code, message, SQLSTATE; `seq` =
   chunks sent before it). The forwarder hands the bytes on as they are: nothing is
   decoded or re-framed on the way (the client's IPC reader takes a stream cut
   anywhere, and detects one that ends early).
3. Flow control: the replica sends chunk `n` only while `n < acked + window`; the
   forwarder publishes ACK(`seq` = chunks its consumer has taken) on the replica's
   control subject every `window // 2` chunks. A replica without credit for `stall`
   seconds gives up and cancels the query. A forwarder whose consumer goes away
   publishes CANCEL; the replica cancels the query at its source.
4. The forwarder checks every chunk's number (a gap or a duplicate fails the query),
   that END counts as many chunks as it received, and that something arrives at least
   every `timeout` seconds: a result is complete or the call fails, never cut short.

Retries: queries are read-only, so before any byte of a result has been handed to the
caller the forwarder retries (bounded: `retries` more attempts, within the deadline) on
no responders, a bus that is reconnecting, no acceptance in time, a replica that
accepted and went silent, and retryable errors. After the first byte it fails instead.

The code is in three modules: `wire` (frames, subjects, the request, records),
`replica` (`RuntimeReplica`, the serving side) and `forwarder` (`BusQueryForwarder`).
"""

from __future__ import annotations

from fabric.messaging.query_rpc.forwarder import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    BusQueryForwarder,
    ForwarderStats,
)
from fabric.messaging.query_rpc.replica import (
    DEFAULT_LINGER,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_REQUEST_AGE,
    ReplicaStats,
    RuntimeReplica,
)
from fabric.messaging.query_rpc.wire import (
    PROTOCOL_VERSION,
    Frame,
    FrameKind,
    WireRequest,
    control_subject,
    query_subject,
    reply_filter,
    reply_subject,
    stage_query_filter,
)

__all__ = [
    "DEFAULT_LINGER",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_REQUEST_AGE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "PROTOCOL_VERSION",
    "BusQueryForwarder",
    "ForwarderStats",
    "Frame",
    "FrameKind",
    "ReplicaStats",
    "RuntimeReplica",
    "WireRequest",
    "control_subject",
    "query_subject",
    "reply_filter",
    "reply_subject",
    "stage_query_filter",
]
