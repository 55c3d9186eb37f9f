"""JSON responses and errors: the body of every error comes from the one error tree
(`fabric.api.status` gives its HTTP status), with a Retry-After header when the error
carries a retry hint, and a compile error's position when the compiler knew it."""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

from fabric.api.status import http_status_for
from fabric.errors import FabricError, QueryRejected


def error_body(error: FabricError) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    if isinstance(error, QueryRejected) and error.position is not None:
        line, column = error.position
        detail["position"] = {"line": line, "column": column}
    return {"error": detail}


def error_response(error: FabricError) -> JSONResponse:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(0, math.ceil(error.retry_after)))
    return JSONResponse(error_body(error), status_code=http_status_for(error), headers=headers)


def plain_error(status: int, code: str, message: str) -> JSONResponse:
    """An error that is not the gateway's (no such path, method not allowed)."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
