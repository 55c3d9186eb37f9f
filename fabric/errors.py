"""The one error tree of the gateway; every error carries a machine-readable code.

    FabricError                      (code)                -> gRPC status (fabric/api/status.py)
    ├── InvalidArgument              invalid_argument      -> INVALID_ARGUMENT
    │   ├── QueryRejected            query_rejected        -> INVALID_ARGUMENT
    │   ├── IntegrityError           integrity_error       -> INVALID_ARGUMENT
    │   ├── RequestTooLarge          request_too_large     -> INVALID_ARGUMENT (HTTP 413)
    │   └── UnsupportedMediaType     unsupported_media_type -> INVALID_ARGUMENT (HTTP 415)
    ├── NotFound                     not_found             -> NOT_FOUND
    ├── AlreadyExists                already_exists        -> ALREADY_EXISTS
    ├── FailedPrecondition           failed_precondition   -> FAILED_PRECONDITION
    │   ├── SourceQueryError         source_query_error    -> FAILED_PRECONDITION
    │   ├── VersionConflict          version_conflict      -> FAILED_PRECONDITION
    │   ├── SelectionChanged         selection_changed     -> FAILED_PRECONDITION
    │   └── SchemaMismatch           schema_mismatch       -> FAILED_PRECONDITION
    ├── PermissionDenied             permission_denied     -> PERMISSION_DENIED
    ├── Unauthenticated              unauthenticated       -> UNAUTHENTICATED
    ├── DeadlineExceeded             deadline_exceeded     -> DEADLINE_EXCEEDED
    ├── Cancelled                    cancelled             -> CANCELLED
    ├── ResourceExhausted            resource_exhausted    -> RESOURCE_EXHAUSTED
    ├── SourceUnavailable            source_unavailable    -> UNAVAILABLE
    │   └── GatewayUnavailable       gateway_unavailable   -> UNAVAILABLE
    │       └── GatewayUnreachable   gateway_unreachable   -> UNAVAILABLE (client side)
    ├── Unimplemented                unimplemented         -> UNIMPLEMENTED
    └── InternalError                internal              -> INTERNAL

Messages say what was wrong and what to do. They never carry a secret, a parameter value
or a row value: database error texts often echo values, so connectors translate them
into a SQLSTATE and a fixed description instead of passing them on. A message names
constructs, never a query's literals, and is cut to MAX_MESSAGE_LENGTH characters here,
so a long name or query part it quotes cannot make the error itself too large to send.
"""

from __future__ import annotations

from typing import ClassVar

MAX_MESSAGE_LENGTH = 1_000
"""Characters an error message keeps; the rest is cut and marked with `...`."""


class FabricError(Exception):
    """Root of every error the gateway raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(
        self, message: str, *, sqlstate: str | None = None, retry_after: float | None = None
    ) -> None:
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.retry_after = retry_after
        """Seconds after which the same call may succeed (gateway busy, over a share,
        shutting down); None: retrying as is will not help."""

    def __str__(self) -> str:
        return self.message


class InvalidArgument(FabricError):
    """The request itself is malformed (missing field, bad parameter type, bad limit)."""

    code = "invalid_argument"


class QueryRejected(InvalidArgument):
    """The SQL text was refused by the compiler; the message names the offending part, and
    `position` (line, column; both from 1) says where in the text when the compiler knows."""

    code = "query_rejected"

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        retry_after: float | None = None,
        position: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, retry_after=retry_after)
        self.position = position


class IntegrityError(InvalidArgument):
    """Sealed data failed authentication: tampered, truncated, or opened with the wrong
    context (tenant, purpose, subject) or an unknown key; nothing of it is returned."""

    code = "integrity_error"


class RequestTooLarge(InvalidArgument):
    """A request body over the size the door accepts (the REST API's FABRIC_HTTP_MAX_BODY);
    it was not read."""

    code = "request_too_large"


class UnsupportedMediaType(InvalidArgument):
    """A request body in a format the door does not read (the REST API reads JSON)."""

    code = "unsupported_media_type"


class NotFound(FabricError):
    code = "not_found"


class AlreadyExists(FabricError):
    code = "already_exists"


class FailedPrecondition(FabricError):
    code = "failed_precondition"


class SourceQueryError(FailedPrecondition):
    """The source ran the query and refused it at run time (division by zero, bad cast)."""

    code = "source_query_error"


class VersionConflict(FailedPrecondition):
    """A change made against a version (of a connection, of a catalog) that is no longer
    the current one: someone else changed it first. Nothing was changed; reload, retry."""

    code = "version_conflict"


class SelectionChanged(FailedPrecondition):
    """Access narrowed while a statement or stream was running (a table or column was
    unselected, the connection was changed or deleted): it was stopped, and nothing more
    of its result is sent. Running the query again shows what is allowed now."""

    code = "selection_changed"


class SchemaMismatch(FailedPrecondition):
    """The source's schema no longer matches the selection in this stage (a selected
    column or table is missing there): a refresh, or a change of the selection, is
    needed. The message names the column or table from the gateway's own metadata."""

    code = "schema_mismatch"


class PermissionDenied(FabricError):
    code = "permission_denied"


class Unauthenticated(FabricError):
    code = "unauthenticated"


class DeadlineExceeded(FabricError):
    """The query ran past its timeout or the caller's deadline; it was cancelled."""

    code = "deadline_exceeded"


class Cancelled(FabricError):
    """The caller cancelled; the query was cancelled at the source too."""

    code = "cancelled"


class ResourceExhausted(FabricError):
    """A limit was reached: the caller's share (queries, open statements), the gateway's
    memory budget, a size cap. With `retry_after`, the same call may succeed later."""

    code = "resource_exhausted"


class SourceUnavailable(FabricError):
    """The external system cannot be reached (down, refused, auth failed, pool exhausted)."""

    code = "source_unavailable"


class NoResponders(SourceUnavailable):
    """Nothing on the bus serves the subject a request went to: no runtime replica of the
    stage is running (or none has joined its queue group yet)."""

    code = "no_responders"


class GatewayUnavailable(SourceUnavailable):
    """This gateway process cannot take the call now (a runtime replica still starting,
    or one shutting down); another replica can, so a client retries it elsewhere."""

    code = "gateway_unavailable"


class GatewayUnreachable(GatewayUnavailable):
    """The client could not reach the gateway at all (nothing listens at the address,
    TLS does not match, the network is down): raised by the client, never by the gateway."""

    code = "gateway_unreachable"


class Unimplemented(FabricError):
    """A request the protocol defines but Fabric does not serve (writes, transactions,
    Substrait plans on the Flight SQL door): the caller should not retry it."""

    code = "unimplemented"


class InternalError(FabricError):
    code = "internal"


ALL_ERRORS: tuple[type[FabricError], ...] = (
    FabricError,
    InvalidArgument,
    QueryRejected,
    IntegrityError,
    RequestTooLarge,
    UnsupportedMediaType,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    SourceQueryError,
    VersionConflict,
    SelectionChanged,
    SchemaMismatch,
    PermissionDenied,
    Unauthenticated,
    DeadlineExceeded,
    Cancelled,
    ResourceExhausted,
    SourceUnavailable,
    NoResponders,
    GatewayUnavailable,
    Unimplemented,
    GatewayUnreachable,
    InternalError,
)
