# ruff: noqa: E501  (the case tables read best one case a line)
"""Bad input to every REST endpoint: a clear 4xx from the one error tree, the field
named, and nothing changed (connections, versions, selection, audit trail)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.rest_support import RestGateway, start_rest_gateway

MAX_BODY = 4096


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[RestGateway]:
    home = tmp_path_factory.mktemp("rest-input")
    for running in start_rest_gateway(home, postgres_url, http_max_body=MAX_BODY):
        path = str(home / "shop.duckdb")
        running.ok(
            "POST",
            "/api/v1/connections",
            json={"name": "shop", "kind": "duckdb", "stages": [{"stage": "*", "settings": {"path": path}}]},
        )  # fmt: skip
        running.ok(
            "POST", "/api/v1/connections/shop/entities", json={"table": "customers", "columns": ["id"]}
        )  # fmt: skip
        yield running


def _state(rest: RestGateway) -> Any:
    connections = rest.ok("GET", "/api/v1/connections")
    entities = rest.ok("GET", "/api/v1/connections/shop/entities")
    events = rest.ok("GET", "/api/v1/audit", params={"limit": 10_000})["events"]
    changes = [e for e in events if not e["action"].endswith(".refused")]
    return connections, entities, len(changes), len(rest.engine.open_statements)


@pytest.fixture(scope="module")
def baseline(rest: RestGateway) -> Any:
    return _state(rest)


def _stage(**settings: Any) -> dict[str, Any]:
    return {"stage": "*", "settings": settings}


NEW = {"name": "fresh", "kind": "duckdb", "stages": [_stage(path="/nowhere.duckdb")]}
QUERY = {"connection": "shop", "sql": "SELECT id FROM customers"}

# (method, path, json body, status, error code, text the message must contain)
CASES: list[tuple[str, str, Any, int, str, str]] = [
    ("POST", "/api/v1/connections", {**NEW, "name": 5}, 400, "invalid_argument", "'name' must be a string"),
    ("POST", "/api/v1/connections", {"name": "fresh", "stages": []}, 400, "invalid_argument", "'kind' is required"),
    ("POST", "/api/v1/connections", {**NEW, "name": ""}, 400, "invalid_argument", "'name' must not be empty"),
    ("POST", "/api/v1/connections", {**NEW, "stages": {}}, 400, "invalid_argument", "'stages' must be an array"),
    ("POST", "/api/v1/connections", {**NEW, "stages": ["*"]}, 400, "invalid_argument", "'stages[0]' must be an object"),
    ("POST", "/api/v1/connections", {**NEW, "stages": [{"settings": {}}]}, 400, "invalid_argument", "'stages[0].stage' is required"),
    ("POST", "/api/v1/connections", {**NEW, "stages": [_stage(path={"a": 1})]}, 400, "invalid_argument", "'stages[0].settings.path'"),
    ("POST", "/api/v1/connections", {**NEW, "stages": [{**_stage(path="/x"), "password": 7}]}, 400, "invalid_argument", "'stages[0].password' must be a string"),
    ("POST", "/api/v1/connections", {**NEW, "stages": [_stage(path="/x"), _stage(path="/y")]}, 400, "invalid_argument", "configured twice"),
    ("POST", "/api/v1/connections", {**NEW, "verify": "yes"}, 400, "invalid_argument", "'verify' must be true or false"),
    ("POST", "/api/v1/connections", {**NEW, "passwrd": "x"}, 400, "invalid_argument", "unknown field 'passwrd'"),
    ("POST", "/api/v1/connections", {**NEW, "kind": "oracle"}, 400, "invalid_argument", "unknown connection kind"),
    ("POST", "/api/v1/connections", {**NEW, "name": "shop"}, 409, "already_exists", "shop"),
    ("PATCH", "/api/v1/connections/shop", {"expected_version": "1"}, 400, "invalid_argument", "'expected_version' must be an integer"),
    ("PATCH", "/api/v1/connections/shop", {"remove_stages": [1]}, 400, "invalid_argument", "'remove_stages[0]'"),
    ("PATCH", "/api/v1/connections/shop", {"stages": [_stage(x=[1])]}, 400, "invalid_argument", "'stages[0].settings.x'"),
    ("PATCH", "/api/v1/connections/nope", {"stages": [_stage(path="/x")]}, 404, "not_found", "nope"),
    ("GET", "/api/v1/connections/nope", None, 404, "not_found", "nope"),
    ("GET", "/api/v1/connections/nope/deletion", None, 404, "not_found", "nope"),
    ("DELETE", "/api/v1/connections/nope", None, 404, "not_found", "nope"),
    ("DELETE", "/api/v1/connections/shop?expected_version=abc", None, 400, "invalid_argument", "'expected_version'"),
    ("POST", "/api/v1/connections/nope/test", {}, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/shop/test", {"stage": 5}, 400, "invalid_argument", "'stage' must be a string"),
    ("POST", "/api/v1/connections/shop/test", {"stage": "no stage!"}, 400, "invalid_argument", "stage"),
    ("POST", "/api/v1/connections/nope/discover", {}, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/shop/discover", {"schemas": "main"}, 400, "invalid_argument", "'schemas' must be an array"),
    ("GET", "/api/v1/connections/nope/entities", None, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/shop/entities", {"columns": ["id"]}, 400, "invalid_argument", "'table' is required"),
    ("POST", "/api/v1/connections/shop/entities", {"table": "orders", "columns": []}, 400, "invalid_argument", "'columns'"),
    ("POST", "/api/v1/connections/shop/entities", {"table": "orders", "columns": [3]}, 400, "invalid_argument", "'columns[0]'"),
    ("POST", "/api/v1/connections/shop/entities", {"table": "orders", "stage_tables": {"production": 1}}, 400, "invalid_argument", "'stage_tables.production'"),
    ("POST", "/api/v1/connections/shop/entities", {"table": "no_such_table"}, 404, "not_found", "no_such_table"),
    ("POST", "/api/v1/connections/nope/entities", {"table": "orders"}, 404, "not_found", "nope"),
    ("DELETE", "/api/v1/connections/shop/entities/nope", None, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/nope/refresh", {}, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/shop/refresh", {"stage": ["x"]}, 400, "invalid_argument", "'stage'"),
    ("POST", "/api/v1/connections/shop/entities/nope/preview", {}, 404, "not_found", "nope"),
    ("POST", "/api/v1/connections/shop/entities/customers/preview", {"limit": -1}, 400, "invalid_argument", "'limit' must be between"),
    ("POST", "/api/v1/connections/shop/entities/customers/preview", {"limit": "5"}, 400, "invalid_argument", "'limit' must be an integer"),
    ("POST", "/api/v1/query", {"connection": "shop"}, 400, "invalid_argument", "'sql' is required"),
    ("POST", "/api/v1/query", {**QUERY, "connection": 1}, 400, "invalid_argument", "'connection' must be a string"),
    ("POST", "/api/v1/query", {**QUERY, "params": [1]}, 400, "invalid_argument", "'params' must be an object"),
    ("POST", "/api/v1/query", {**QUERY, "max_rows": 0}, 400, "invalid_argument", "'max_rows' must be between"),
    ("POST", "/api/v1/query", {**QUERY, "max_rows": True}, 400, "invalid_argument", "'max_rows' must be an integer"),
    ("POST", "/api/v1/query", {**QUERY, "cache_ttl_seconds": "1"}, 400, "invalid_argument", "'cache_ttl_seconds' must be a number"),
    ("POST", "/api/v1/query", {**QUERY, "connection": "nope"}, 404, "not_found", "nope"),
    ("POST", "/api/v1/statements", {**QUERY, "page_size": "x"}, 400, "invalid_argument", "'page_size' must be an integer"),
    ("POST", "/api/v1/statements", {**QUERY, "connection": "nope"}, 404, "not_found", "nope"),
    ("POST", "/api/v1/statements/nope/next", {}, 404, "not_found", "statement"),
    ("POST", "/api/v1/statements/nope/next", {"page_size": 0}, 400, "invalid_argument", "'page_size' must be between"),
    ("DELETE", "/api/v1/statements/nope", None, 404, "not_found", "statement"),
    ("GET", "/api/v1/audit?limit=0", None, 400, "invalid_argument", "'limit'"),
    ("GET", "/api/v1/audit?limit=ten", None, 400, "invalid_argument", "'limit'"),
    ("POST", "/api/v1/session", {}, 400, "invalid_argument", "'code' is required"),
    ("POST", "/api/v1/session", {"code": 5}, 400, "invalid_argument", "'code' must be a string"),
    ("POST", "/api/v1/session", {"code": "not-a-code"}, 401, "unauthenticated", "sign-in code"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "text"), CASES)
def test_bad_input_is_refused_and_changes_nothing(
    rest: RestGateway,
    baseline: Any,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    text: str,
) -> None:
    response = rest.call(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert text in error["message"], error
    assert _state(rest) == baseline


def test_a_stale_version_is_a_conflict_and_changes_nothing(
    rest: RestGateway, baseline: Any
) -> None:
    response = rest.call("DELETE", "/api/v1/connections/shop?expected_version=99")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "version_conflict"
    assert _state(rest) == baseline


RAW_CASES: list[tuple[str, bytes, dict[str, str], int, str, str]] = [
    ("/api/v1/query", b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_argument", "JSON object"),
    ("/api/v1/query", b"{\"sql\": ", {"content-type": "application/json"}, 400, "invalid_argument", "not valid JSON"),
    ("/api/v1/query", b"{\"sql\": NaN}", {"content-type": "application/json"}, 400, "invalid_argument", "not valid JSON"),
    ("/api/v1/query", b"\xff\xfe{}", {"content-type": "application/json"}, 400, "invalid_argument", "not valid JSON"),
    ("/api/v1/connections", b"name=x&kind=duckdb", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "application/json"),
    ("/api/v1/connections", b"{}", {"content-type": "text/plain"}, 415, "unsupported_media_type", "application/json"),
    ("/api/v1/connections", b"{}", {}, 415, "unsupported_media_type", "application/json"),
    ("/api/v1/connections", b"{\"name\": \"" + b"x" * MAX_BODY + b"\"}", {"content-type": "application/json"}, 413, "request_too_large", f"{MAX_BODY} bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "data", "headers", "status", "code", "text"), RAW_CASES)
def test_bodies_that_are_not_a_json_object_are_refused(
    rest: RestGateway,
    baseline: Any,
    path: str,
    data: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    text: str,
) -> None:
    response = rest.call("POST", path, content=data, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and text in error["message"]
    assert _state(rest) == baseline


def test_an_oversized_body_without_a_length_is_cut_off(rest: RestGateway, baseline: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    response = rest.call(
        "POST",
        "/api/v1/connections",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert _state(rest) == baseline


def test_unknown_paths_and_methods_are_json_errors(rest: RestGateway) -> None:
    missing = rest.call("GET", "/api/v1/tables")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = rest.call("PUT", "/api/v1/connections")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
