"""Request bodies: read within a size limit, parsed as a JSON object, and their fields
checked by type with an error naming the field. Nothing is acted on before the whole
body passed: a bad field changes nothing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from starlette.requests import Request

from fabric.errors import InvalidArgument, RequestTooLarge, UnsupportedMediaType

T = TypeVar("T")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`. RequestTooLarge past `limit`
    bytes (by Content-Length before anything is read, else as it arrives),
    UnsupportedMediaType unless it is `application/json`, InvalidArgument unless it is
    a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestTooLarge(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType("the request body must be JSON (Content-Type: application/json)")
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("the request body is not valid JSON (UTF-8)") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON_TYPES: Mapping[type, str] = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    dict: "an object",
    list: "an array",
}


class Fields:
    """The fields of one JSON object, read by name and type; `where` prefixes the name
    in errors (`stages[1].settings`)."""

    def __init__(self, document: Mapping[str, Any], where: str = "") -> None:
        self._document = document
        self._where = where

    def name(self, field: str) -> str:
        return f"{self._where}.{field}" if self._where else field

    def _get(self, field: str, kind: type[T], required: bool) -> T | None:
        value = self._document.get(field)
        if value is None:
            if required:
                raise InvalidArgument(f"field '{self.name(field)}' is required")
            return None
        wrong = isinstance(value, bool) and kind is not bool
        if wrong or not isinstance(value, kind):
            raise InvalidArgument(f"field '{self.name(field)}' must be {_JSON_TYPES[kind]}")
        return value

    def string(self, field: str, *, required: bool = False) -> str | None:
        value = self._get(field, str, required)
        if required and value == "":
            raise InvalidArgument(f"field '{self.name(field)}' must not be empty")
        return value

    def required_string(self, field: str) -> str:
        value = self.string(field, required=True)
        assert value is not None
        return value

    def boolean(self, field: str, default: bool = False) -> bool:
        value = self._get(field, bool, False)
        return default if value is None else value

    def integer(
        self, field: str, *, minimum: int = 0, maximum: int = 2**63 - 1, required: bool = False
    ) -> int | None:
        value = self._get(field, int, required)
        if value is not None and not minimum <= value <= maximum:
            raise InvalidArgument(
                f"field '{self.name(field)}' must be between {minimum} and {maximum}"
            )
        return value

    def number(self, field: str, *, minimum: float = 0.0) -> float | None:
        value = self._document.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"field '{self.name(field)}' must be a number")
        if value < minimum:
            raise InvalidArgument(f"field '{self.name(field)}' must be at least {minimum:g}")
        return float(value)

    def obj(self, field: str, *, required: bool = False) -> dict[str, Any] | None:
        return self._get(field, dict, required)

    def array(self, field: str, *, required: bool = False) -> list[Any] | None:
        return self._get(field, list, required)

    def strings(self, field: str, *, required: bool = False) -> list[str] | None:
        items = self.array(field, required=required)
        if items is None:
            return None
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise InvalidArgument(
                    f"field '{self.name(field)}[{index}]' must be a non-empty string"
                )
        return items

    def objects(self, field: str, *, required: bool = False) -> list[Fields]:
        items = self.array(field, required=required) or []
        result = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidArgument(f"field '{self.name(field)}[{index}]' must be an object")
            result.append(Fields(item, f"{self.name(field)}[{index}]"))
        return result

    def only(self, *allowed: str) -> None:
        """InvalidArgument naming a field that is not one of `allowed` (a typo in a field
        name must not be silently ignored)."""
        for field in self._document:
            if field not in allowed:
                raise InvalidArgument(
                    f"unknown field '{self.name(field)}' (expected: {', '.join(allowed)})"
                )
