"""The one table from error codes to gRPC and HTTP status codes."""

from __future__ import annotations

import grpc

from fabric import errors
from fabric.observability.access import REQUEST_ID_HEADER, current_call

STATUSES: dict[type[errors.FabricError], tuple[grpc.StatusCode, int]] = {
    # error class:                  (gRPC status,                         HTTP status)
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.QueryRejected: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.IntegrityError: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.RequestTooLarge: (grpc.StatusCode.INVALID_ARGUMENT, 413),
    errors.UnsupportedMediaType: (grpc.StatusCode.INVALID_ARGUMENT, 415),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, 409),
    # FAILED_PRECONDITION is 422 over HTTP: the request was well formed, the state of
    # what it names does not allow it; a version conflict is 409 (reload, retry).
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 422),
    errors.SourceQueryError: (grpc.StatusCode.FAILED_PRECONDITION, 422),
    errors.VersionConflict: (grpc.StatusCode.FAILED_PRECONDITION, 409),
    errors.SelectionChanged: (grpc.StatusCode.FAILED_PRECONDITION, 422),
    errors.SchemaMismatch: (grpc.StatusCode.FAILED_PRECONDITION, 422),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    errors.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    errors.Cancelled: (grpc.StatusCode.CANCELLED, 499),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    errors.SourceUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    errors.NoResponders: (grpc.StatusCode.UNAVAILABLE, 503),
    errors.GatewayUnavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    errors.GatewayUnreachable: (grpc.StatusCode.UNAVAILABLE, 503),
    errors.Unimplemented: (grpc.StatusCode.UNIMPLEMENTED, 501),
    errors.InternalError: (grpc.StatusCode.INTERNAL, 500),
    errors.FabricError: (grpc.StatusCode.INTERNAL, 500),
}
"""The one table from error classes to statuses: gRPC (`status_for`) and HTTP for the
REST API (`http_status_for`)."""

GRPC_STATUS: dict[type[errors.FabricError], grpc.StatusCode] = {
    cls: grpc_status for cls, (grpc_status, _http) in STATUSES.items()
}
HTTP_STATUS: dict[type[errors.FabricError], int] = {
    cls: http for cls, (_grpc, http) in STATUSES.items()
}

# The reverse direction, for the client: a status code names the error class to raise.
ERROR_FOR_STATUS: dict[grpc.StatusCode, type[errors.FabricError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.SourceUnavailable,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}

# Trailing metadata key carrying the machine-readable error code (`query_rejected`, ...).
ERROR_CODE_KEY = "fabric-error-code"
SQLSTATE_KEY = "fabric-sqlstate"
# Trailing metadata key carrying the retry hint: milliseconds after which the same call
# may succeed (the gateway was busy, the caller over its share, the gateway draining).
RETRY_AFTER_KEY = "fabric-retry-after-ms"


async def abort_with(context: grpc.aio.ServicerContext, error: errors.FabricError) -> None:
    """End the call with `error`'s status and message, its code (and SQLSTATE, if any)
    in the trailing metadata. Raises grpc.aio.AbortError, as `context.abort` does."""
    metadata: list[tuple[str, str]] = [(ERROR_CODE_KEY, error.code)]
    call = current_call()
    if call is not None:
        metadata.append((REQUEST_ID_HEADER, call.request_id))
    if error.sqlstate:
        metadata.append((SQLSTATE_KEY, error.sqlstate))
    if error.retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(max(0, round(error.retry_after * 1000)))))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(status_for(error), error.message)


def status_for(error: errors.FabricError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        status = GRPC_STATUS.get(cls)
        if status is not None:
            return status
    return grpc.StatusCode.INTERNAL


def http_status_for(error: errors.FabricError) -> int:
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_from_rpc(
    code: grpc.StatusCode,
    details: str,
    error_code: str | None,
    sqlstate: str | None,
    retry_after_ms: str | None = None,
) -> errors.FabricError:
    """Rebuild the gateway's error on the client side, keeping its exact class when the
    server said which one it was, and its retry hint."""
    by_code = {cls.code: cls for cls in errors.ALL_ERRORS}
    cls = by_code.get(error_code or "") or ERROR_FOR_STATUS.get(code, errors.InternalError)
    return cls(details or code.name, sqlstate=sqlstate, retry_after=_seconds(retry_after_ms))


def _seconds(milliseconds: str | None) -> float | None:
    if milliseconds is None:
        return None
    try:
        value = int(milliseconds)
    except ValueError:
        return None
    return value / 1000 if value >= 0 else None
