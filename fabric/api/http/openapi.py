"""The OpenAPI 3.1 document of the REST API, built from the endpoint descriptions the
app's routes are built from."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fabric.api.http import schemas as s
from fabric.api.http.endpoint import Endpoint

_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")
_ERRORS = {
    "400": "bad input (the message names the field)",
    "401": "no valid bearer token",
    "403": "the caller's role may not do this (app tokens: nothing)",
    "404": "not found",
    "409": "a version conflict, or it exists already",
    "413": "the body is too large",
    "415": "the body is not JSON",
    "422": "the state of what it names does not allow it (failed precondition)",
    "429": "a limit was reached; see Retry-After",
    "503": "unavailable (a source, or the gateway draining); retry",
    "504": "the deadline passed",
}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": s.STRING}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": dict(schema)}
        for name, schema in endpoint.query.items()
    ]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": {
            str(endpoint.status): {
                "description": "success",
                "content": {"application/json": {"schema": dict(endpoint.response)}},
            },
            **{code: {"description": text, **error} for code, text in _ERRORS.items()},
        },
    }
    if endpoint.role is None:
        operation["security"] = []
    else:
        operation["description"] = f"Least role: {endpoint.role.value}."
    if parameters:
        operation["parameters"] = parameters
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": endpoint.method != "POST" or "required" in endpoint.request,
            "content": {"application/json": {"schema": dict(endpoint.request)}},
        }
    return operation


def document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fabric REST API",
            "version": "1",
            "description": "The gateway's connections, catalog, queries and audit over "
            "HTTPS with the same bearer tokens as its gRPC API.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": s.ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
