"""The one table from error codes to gRPC status codes."""

from __future__ import annotations

import grpc

from fabric import errors
from fabric.observability.access import REQUEST_ID_HEADER, current_call

GRPC_STATUS: dict[type[errors.FabricError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.QueryRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.IntegrityError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SourceQueryError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.VersionConflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SelectionChanged: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SchemaMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.SourceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NoResponders: grpc.StatusCode.UNAVAILABLE,
    errors.GatewayUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.GatewayUnreachable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.FabricError: grpc.StatusCode.INTERNAL,
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
