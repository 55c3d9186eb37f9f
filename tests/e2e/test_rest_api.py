"""The REST API end to end: a real gateway with HTTP on a free port, real PostgreSQL and
DuckDB sources, tokens of each role, httpx as the client."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.routing import Route

from fabric.api.http.api import ENDPOINTS, rest_app
from fabric.api.http.headers import CONTENT_SECURITY_POLICY
from fabric.context import Role
from tests.e2e.rest_support import PASSWORD, ROWS, RestGateway, start_rest_gateway
from tests.support.leaks import files_containing


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[RestGateway]:
    home = tmp_path_factory.mktemp("rest")
    yield from start_rest_gateway(home, postgres_url, principal_max_statements=2)


def _concrete(path: str) -> str:
    return (
        path.replace("{name}", "shop")
        .replace("{entity}", "orders")
        .replace("{statement_id}", "nope")
    )


def _create_pg(rest: RestGateway, name: str, password: str | None = PASSWORD) -> Any:
    stage: dict[str, Any] = {"stage": "*", "settings": rest.pg_settings()}
    if password is not None:
        stage["password"] = password
    return rest.ok(
        "POST", "/api/v1/connections", json={"name": name, "kind": "postgres", "stages": [stage]}
    )


def _create_duckdb(rest: RestGateway, name: str = "shop") -> Any:
    existing = rest.call("GET", f"/api/v1/connections/{name}")
    if existing.status_code == 200:
        return existing.json()
    path = str(rest.home / "shop.duckdb")
    return rest.ok(
        "POST",
        "/api/v1/connections",
        json={
            "name": name,
            "kind": "duckdb",
            "stages": [{"stage": "*", "settings": {"path": path}}],
        },
    )


def _select_items(rest: RestGateway, connection: str, columns: list[str] | None = None) -> Any:
    body: dict[str, Any] = {"schema": rest.pg_schema, "table": "items", "entity": "items"}
    if columns is not None:
        body["columns"] = columns
    return rest.ok("POST", f"/api/v1/connections/{connection}/entities", "developer", json=body)


def _state(rest: RestGateway) -> Any:
    """What a refused call must not have changed: connections (with versions and catalog
    versions) and the number of audit events."""
    connections = rest.ok("GET", "/api/v1/connections")
    events = rest.ok("GET", "/api/v1/audit", params={"limit": 10_000})["events"]
    changes = [e for e in events if not e["action"].endswith(".refused")]
    return connections, len(changes)


# -- headers, content types ---------------------------------------------------------------


def test_every_response_carries_the_security_headers(rest: RestGateway) -> None:
    responses = {
        "api": rest.call("GET", "/api/v1/me"),
        "api_error": rest.call("GET", "/api/v1/me", None),
        "unknown": rest.call("GET", "/api/v1/nothing-here"),
        "page": rest.call("GET", "/", None),
        "asset": rest.call("GET", "/static/index.html", None),
    }
    for what, response in responses.items():
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, what
        assert response.headers["x-content-type-options"] == "nosniff", what
        assert response.headers["referrer-policy"] == "no-referrer", what
    for what in ("api", "api_error", "unknown"):
        response = responses[what]
        assert response.headers["content-type"] == "application/json", what
        assert response.headers["cache-control"] == "no-store", what
        json.loads(response.text)
    assert responses["page"].status_code == 200
    assert responses["page"].headers["content-type"].startswith("text/html")
    assert "Fabric portal" in responses["page"].text
    assert "cache-control" not in responses["page"].headers


def test_json_escapes_markup_and_keeps_it_data(rest: RestGateway) -> None:
    _create_duckdb(rest)
    rest.ok(
        "POST",
        "/api/v1/connections/shop/entities",
        json={"table": "customers", "columns": ["id", "name"]},
    )
    result = rest.ok(
        "POST",
        "/api/v1/query",
        "developer",
        json={
            "connection": "shop",
            "sql": "SELECT '<script>alert(1)</script>' AS \"<img src=x onerror=alert(1)>\" "
            "FROM customers WHERE id = 1",
        },
    )
    assert result["columns"][0]["name"] == "<img src=x onerror=alert(1)>"
    assert result["rows"] == [["<script>alert(1)</script>"]]


# -- who may call what --------------------------------------------------------------------


def test_app_tokens_are_refused_on_every_endpoint_and_audited(rest: RestGateway) -> None:
    for endpoint in ENDPOINTS:
        if endpoint.role is None:
            continue
        response = rest.call(endpoint.method, _concrete(endpoint.path), "app", json={})
        assert response.status_code == 403, (endpoint.path, response.text)
        assert response.json()["error"]["code"] == "permission_denied"
        assert "app tokens cannot sign in" in response.json()["error"]["message"]
    events = rest.ok("GET", "/api/v1/audit", params={"limit": 10_000})["events"]
    refused = {e["details"].get("method") for e in events if e["actor"] == "app@example.com"}
    assert "REST GET /api/v1/me" in refused and "REST POST /api/v1/query" in refused


def test_calls_without_a_valid_token_are_unauthenticated(rest: RestGateway) -> None:
    for endpoint in ENDPOINTS:
        if endpoint.role is None:
            continue
        path = _concrete(endpoint.path)
        missing = rest.call(endpoint.method, path, None)
        assert missing.status_code == 401, endpoint.path
        assert missing.json()["error"]["code"] == "unauthenticated"
    failures = rest.engine.metrics.registry.get_sample_value
    invalid_before = failures("fabric_auth_failures_total", {"reason": "invalid_token"})
    forged = rest.call("GET", "/api/v1/me", None, headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401
    invalid_after = failures("fabric_auth_failures_total", {"reason": "invalid_token"})
    assert invalid_before is not None and invalid_after == invalid_before + 1
    basic = rest.call("GET", "/api/v1/me", None, headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_developers_read_but_do_not_manage_connections(rest: RestGateway) -> None:
    _create_duckdb(rest)
    before = _state(rest)
    assert rest.ok("GET", "/api/v1/connections", "developer")["connections"]
    assert rest.ok("GET", "/api/v1/connections/shop", "developer")["name"] == "shop"
    assert rest.ok("GET", "/api/v1/kinds", "developer")
    assert rest.ok("GET", "/api/v1/me", "developer")["role"] == "developer"
    admin_only = [e for e in ENDPOINTS if e.role is Role.ADMIN]
    assert {(e.method, e.path) for e in admin_only} >= {
        ("POST", "/api/v1/connections"),
        ("PATCH", "/api/v1/connections/{name}"),
        ("DELETE", "/api/v1/connections/{name}"),
        ("GET", "/api/v1/connections/{name}/deletion"),
        ("POST", "/api/v1/connections/{name}/test"),
        ("GET", "/api/v1/audit"),
    }
    for endpoint in admin_only:
        body = {"name": "x", "kind": "duckdb", "stages": [{"stage": "*", "settings": {}}]}
        response = rest.call(endpoint.method, _concrete(endpoint.path), "developer", json=body)
        assert response.status_code == 403, endpoint.path
        assert "needs the 'admin' role" in response.json()["error"]["message"]
    assert _state(rest) == before


# -- connections and the catalog with PostgreSQL ------------------------------------------


def test_connection_lifecycle_on_postgres(rest: RestGateway) -> None:
    created = _create_pg(rest, "pg_life")
    assert created["kind"] == "postgres" and created["version"] == 1
    assert created["stages"] == [
        {"stage": "*", "settings": rest.pg_settings(), "has_password": True}
    ]
    listed = rest.ok("GET", "/api/v1/connections", "developer")["connections"]
    assert "pg_life" in [c["name"] for c in listed]
    assert PASSWORD not in json.dumps(listed) and PASSWORD not in json.dumps(created)
    assert files_containing(rest.home, PASSWORD) == []

    tested = rest.ok("POST", "/api/v1/connections/pg_life/test", json={})
    assert tested["results"][0]["ok"] is True and tested["results"][0]["stage"] == "development"

    tables = rest.ok(
        "POST", "/api/v1/connections/pg_life/discover", "developer",
        json={"schemas": [rest.pg_schema]},
    )["tables"]  # fmt: skip
    by_name = {t["name"]: t for t in tables}
    assert by_name["regions"]["primary_key"] == ["country", "code"]
    assert by_name["shops"]["foreign_keys"] == [
        {
            "name": by_name["shops"]["foreign_keys"][0]["name"],
            "columns": ["country", "code"],
            "references": {
                "schema": rest.pg_schema,
                "table": "regions",
                "columns": ["country", "code"],
            },
        }
    ]
    assert {c["name"]: c["type"] for c in by_name["items"]["columns"]}["price"] == "numeric(12,2)"

    selected = _select_items(rest, "pg_life", ["id", "label", "price"])
    entity = selected["entities"][0]
    assert entity["selected_columns"] == ["id", "label", "price"]
    assert entity["table"] == {"schema": rest.pg_schema, "name": "items"}
    listed_entities = rest.ok("GET", "/api/v1/connections/pg_life/entities", "developer")
    assert [e["name"] for e in listed_entities["entities"]] == ["items"]
    assert listed_entities["catalog_version"] == selected["catalog_version"]

    preview = rest.ok(
        "POST", "/api/v1/connections/pg_life/entities/items/preview", "developer",
        json={"limit": 3},
    )  # fmt: skip
    assert [c["name"] for c in preview["columns"]] == ["id", "label", "price"]
    for id_, label, price in preview["rows"]:  # a preview has no order
        assert label == f"item {id_}" and price == f"{id_ * 1.25:.2f}"
    assert preview["row_count"] == 3 and preview["truncated"] is True

    refused = rest.call(
        "POST", "/api/v1/query", "developer",
        json={"connection": "pg_life", "sql": "SELECT secret FROM items"},
    )  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "query_rejected"
    assert "secret" in refused.json()["error"]["message"]

    report = rest.ok("POST", "/api/v1/connections/pg_life/refresh", "developer", json={})
    assert report["drift"] == [] and report["catalog_version"] == selected["catalog_version"]

    stale = rest.call(
        "PATCH", "/api/v1/connections/pg_life",
        json={"expected_version": 7, "stages": [{"stage": "*", "settings": rest.pg_settings()}]},
    )  # fmt: skip
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "version_conflict"
    updated = rest.ok(
        "PATCH", "/api/v1/connections/pg_life",
        json={
            "expected_version": 1,
            "stages": [{"stage": "*", "settings": {**rest.pg_settings(), "connect_timeout": 5}}],
        },
    )  # fmt: skip
    assert updated["version"] == 2 and updated["stages"][0]["has_password"] is True

    rest.ok(
        "POST", "/api/v1/query", "developer",
        json={"connection": "pg_life", "sql": "SELECT id FROM items", "cache_ttl_seconds": 60},
    )  # fmt: skip
    preview_counts = rest.ok("GET", "/api/v1/connections/pg_life/deletion")
    assert preview_counts == {
        "stages": 1,
        "secrets": 1,
        "entities": 1,
        "cached_results": 1,
        "open_statements": 0,
    }
    deleted = rest.ok("DELETE", "/api/v1/connections/pg_life")
    assert deleted == {**preview_counts, "secrets_removed": 1}
    gone = rest.call("GET", "/api/v1/connections/pg_life")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert rest.engine.results.count_connection("default", "pg_life") == 0


def test_a_failed_connection_test_is_a_result_not_an_error(rest: RestGateway) -> None:
    settings = {**rest.pg_settings(), "database": "no_such_database_here"}
    rest.ok(
        "POST", "/api/v1/connections",
        json={
            "name": "pg_bad", "kind": "postgres", "stages": [{"stage": "*", "settings": settings}]
        },
    )  # fmt: skip
    tested = rest.ok("POST", "/api/v1/connections/pg_bad/test", json={"stage": "development"})
    result = tested["results"][0]
    assert result["ok"] is False, result
    assert result["code"] in ("source_unavailable", "failed_precondition"), result
    assert result["message"] and "no_such_database_here" not in result["message"]
    rest.ok("DELETE", "/api/v1/connections/pg_bad")


def test_unselect_and_a_stale_selection(rest: RestGateway) -> None:
    _create_pg(rest, "pg_sel", password=None)
    version = _select_items(rest, "pg_sel")["catalog_version"]
    stale = rest.call(
        "POST", "/api/v1/connections/pg_sel/entities", "developer",
        json={
            "schema": rest.pg_schema, "table": "regions", "expected_catalog_version": version - 1
        },
    )  # fmt: skip
    assert stale.status_code == 409
    after = rest.ok("DELETE", "/api/v1/connections/pg_sel/entities/items", "developer")
    assert after["catalog_version"] > version
    assert rest.ok("GET", "/api/v1/connections/pg_sel/entities")["entities"] == []
    missing = rest.call("DELETE", "/api/v1/connections/pg_sel/entities/items", "developer")
    assert missing.status_code == 404
    rest.ok("DELETE", "/api/v1/connections/pg_sel")


# -- queries, values, statements, history --------------------------------------------------


@pytest.fixture(scope="module")
def pg_items(rest: RestGateway) -> str:
    _create_pg(rest, "pg", password=None)
    _select_items(rest, "pg", ["id", "label", "price", "big", "ratio", "at", "day", "data"])
    return "pg"


def test_values_travel_as_json_without_loss(rest: RestGateway, pg_items: str) -> None:
    result = rest.ok(
        "POST", "/api/v1/query", "developer",
        json={
            "connection": pg_items,
            "sql": "SELECT id, price, big, ratio, at, day, data "
            "FROM items WHERE id <= :last ORDER BY id",
            "params": {"last": 2},
        },
    )  # fmt: skip
    assert [c["name"] for c in result["columns"]] == [
        "id", "price", "big", "ratio", "at", "day", "data"
    ]  # fmt: skip
    first, second = result["rows"]
    assert first[:4] == [1, "1.25", "9007199254740994", "NaN"]
    assert first[4] == "2024-01-01T00:01:00+00:00" and first[5] == "2024-01-02"
    assert base64.b64decode(first[6]) == b"\x00\x01\xff"
    assert second[3] == "-Infinity"
    assert result["row_count"] == 2 and result["truncated"] is False
    assert result["from_cache"] is False and result["elapsed_ms"] > 0


def test_typed_parameters_and_caps(rest: RestGateway, pg_items: str) -> None:
    typed = rest.ok(
        "POST", "/api/v1/query", "developer",
        json={
            "connection": pg_items,
            "sql": "SELECT id FROM items WHERE day = :day AND price = :price",
            "params": {"day": {"date": "2024-01-03"}, "price": {"decimal": "2.50"}},
        },
    )  # fmt: skip
    assert typed["rows"] == [[2]]
    capped = rest.ok(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT id FROM items", "max_rows": 5},
    )  # fmt: skip
    assert capped["row_count"] == 5 and capped["truncated"] is True
    bad = rest.call(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT 1 FROM items", "params": {"p": [1]}},
    )  # fmt: skip
    assert bad.status_code == 400 and "parameter 'p'" in bad.json()["error"]["message"]
    wrong = rest.call(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT 1", "params": {"d": {"date": "soon-ish"}}},
    )  # fmt: skip
    assert wrong.status_code == 400 and "soon-ish" not in wrong.text


def test_cached_results_say_so(rest: RestGateway, pg_items: str) -> None:
    body = {
        "connection": pg_items,
        "sql": "SELECT COUNT(*) AS n FROM items",
        "cache_ttl_seconds": 60,
    }
    first = rest.ok("POST", "/api/v1/query", "developer", json=body)
    second = rest.ok("POST", "/api/v1/query", "developer", json=body)
    assert first["rows"] == second["rows"] == [[ROWS]]
    assert first["from_cache"] is False and second["from_cache"] is True


def test_compile_errors_point_at_the_position(rest: RestGateway, pg_items: str) -> None:
    response = rest.call(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT id\nFROM items WHERE (id = 1"},
    )  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "query_rejected"
    assert error["position"]["line"] == 2 and error["position"]["column"] >= 1
    unknown = rest.call(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT nope FROM items"},
    )  # fmt: skip
    assert unknown.status_code == 400 and "position" not in unknown.json()["error"]


def test_statements_page_through_a_large_result(rest: RestGateway, pg_items: str) -> None:
    first = rest.ok(
        "POST", "/api/v1/statements", "developer",
        json={"connection": pg_items, "sql": "SELECT id FROM items ORDER BY id", "page_size": 1000},
    )  # fmt: skip
    statement = first["statement_id"]
    assert statement and first["done"] is False and first["row_count"] == 1000
    seen = [row[0] for row in first["rows"]]
    page = first
    while not page["done"]:
        page = rest.ok("POST", f"/api/v1/statements/{statement}/next", "developer", json={})
        seen += [row[0] for row in page["rows"]]
    assert seen == list(range(1, ROWS + 1))
    assert page["statement_id"] == statement
    ended = rest.call("POST", f"/api/v1/statements/{statement}/next", "developer", json={})
    assert ended.status_code == 404

    other = rest.ok(
        "POST", "/api/v1/statements", "developer",
        json={"connection": pg_items, "sql": "SELECT id FROM items", "page_size": 10},
    )  # fmt: skip
    stranger = rest.call(
        "POST", f"/api/v1/statements/{other['statement_id']}/next", "developer", tenant="other"
    )
    assert stranger.status_code == 404
    closed = rest.ok("DELETE", f"/api/v1/statements/{other['statement_id']}", "developer")
    assert closed == {"closed": True}


def test_too_many_open_statements_is_429_with_retry_after(rest: RestGateway, pg_items: str) -> None:
    body = {"connection": pg_items, "sql": "SELECT id FROM items", "page_size": 1}
    opened = [
        rest.ok("POST", "/api/v1/statements", "developer", subject="busy", json=body)
        for _ in range(2)
    ]
    refused = rest.call("POST", "/api/v1/statements", "developer", subject="busy", json=body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "resource_exhausted"
    assert int(refused.headers["retry-after"]) >= 1
    for page in opened:
        rest.ok("DELETE", f"/api/v1/statements/{page['statement_id']}", "developer", subject="busy")


def test_history_keeps_the_shape_never_the_values(rest: RestGateway, pg_items: str) -> None:
    canary = "Literal-Canary-77"
    rest.ok(
        "POST", "/api/v1/query", "developer", subject="historian",
        json={
            "connection": pg_items,
            "sql": f"SELECT id FROM items WHERE label <> '{canary}' AND id < :n AND label <> :p",
            "params": {"n": 4, "p": "Param-Canary-55"},
        },
    )  # fmt: skip
    rest.call(
        "POST", "/api/v1/query", "developer", subject="historian",
        json={"connection": pg_items, "sql": "SELECT secret FROM items"},
    )  # fmt: skip
    history = rest.ok("GET", "/api/v1/history", "developer", subject="historian")
    assert [entry["status"] for entry in history] == ["query_rejected", "ok"]
    ok = history[1]
    assert ok["sql_shape"] == "SELECT id FROM items WHERE label <> ? AND id < :n AND label <> :p"
    assert ok["rows"] == 3 and ok["connection"] == pg_items and ok["from_cache"] is False
    assert canary not in json.dumps(history) and "Param-Canary" not in json.dumps(history)
    assert rest.ok("GET", "/api/v1/history", "developer", subject="someone-else") == []


def test_stats_come_from_the_gateways_metrics(rest: RestGateway, pg_items: str) -> None:
    before = rest.ok("GET", "/api/v1/stats", "developer")
    body = {
        "connection": pg_items,
        "sql": "SELECT MAX(id) AS m FROM items",
        "cache_ttl_seconds": 30,
    }
    rest.ok("POST", "/api/v1/query", "developer", json=body)
    rest.ok("POST", "/api/v1/query", "developer", json=body)
    after = rest.ok("GET", "/api/v1/stats", "developer")
    assert after["queries_by_protocol"]["rest"] >= before["queries_by_protocol"].get("rest", 0) + 2
    assert after["queries_total"] >= after["queries_by_protocol"]["rest"]
    assert 0 < after["cache_hit_ratio"] <= 1
    assert after["latency_ms"]["p50"] <= after["latency_ms"]["p99"]
    assert "connection_purged" in after["purges"]


# -- the OpenAPI document -----------------------------------------------------------------


def test_openapi_lists_every_route_and_nothing_else(rest: RestGateway) -> None:
    document = rest.ok("GET", "/api/v1/openapi.json", "developer")
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    app = rest_app(rest.gateway.rest)
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api/")
        for method in set(route.methods or ()) - {"HEAD"}
    }
    assert documented == served
    assert len(served) == len(ENDPOINTS)
    operations = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(set(operations)) == len(ENDPOINTS)


# -- running queries ------------------------------------------------------------------------


def _running_of(rest: RestGateway, principal: str) -> list[Any]:
    queries = rest.ok("GET", "/api/v1/running")["queries"]
    return [q for q in queries if q["principal"] == principal]


def test_an_admin_lists_a_running_query_and_cancels_it(rest: RestGateway, pg_items: str) -> None:
    body = {
        "connection": pg_items,
        "sql": "SELECT count(*) AS n FROM items WHERE id > :min",
        "params": {"min": 0},
    }
    with (
        psycopg.connect(rest.pg_url) as locker,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        locker.execute(f"LOCK TABLE {rest.pg_schema}.items IN ACCESS EXCLUSIVE MODE")
        pending = pool.submit(
            rest.call, "POST", "/api/v1/query", "developer", subject="slow@example.com", json=body
        )
        deadline = time.monotonic() + 30
        while not (running := _running_of(rest, "slow@example.com")):
            assert time.monotonic() < deadline, "the query never showed as running"
            assert not pending.done(), pending.result().text
            time.sleep(0.01)
        (query,) = running
        assert query["connection"] == pg_items and query["protocol"] == "rest"
        assert query["sql_shape"] == "SELECT count(*) AS n FROM items WHERE id > :min"
        assert rest.call("GET", "/api/v1/running", "developer").status_code == 403
        refused = rest.call("POST", f"/api/v1/running/{query['id']}/cancel", "developer")
        assert refused.status_code == 403 and _running_of(rest, "slow@example.com")
        cancelled = rest.ok("POST", f"/api/v1/running/{query['id']}/cancel")
        assert cancelled == {"cancelled": True, "replica": query["replica"]}
        response = pending.result(timeout=60)
        locker.rollback()
    assert response.status_code == 499, response.text
    assert response.json()["error"]["code"] == "cancelled"
    again = rest.ok("POST", f"/api/v1/running/{query['id']}/cancel")
    assert again == {"cancelled": False, "replica": None}
    assert _running_of(rest, "slow@example.com") == []
    malformed = rest.call("POST", "/api/v1/running/not-an-id/cancel")
    assert malformed.status_code == 400


def test_no_value_reaches_the_log(
    rest: RestGateway, pg_items: str, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "Log-Canary-31337"
    caplog.set_level(logging.DEBUG)
    failed = rest.call(
        "POST", "/api/v1/query", "developer",
        json={
            "connection": pg_items,
            "sql": f"SELECT id FROM items WHERE label = '{canary}' AND id = CAST(:x AS INTEGER)",
            "params": {"x": canary},
        },
    )  # fmt: skip
    assert failed.status_code == 422, failed.text
    assert canary not in failed.text
    rest.ok(
        "POST", "/api/v1/query", "developer",
        json={"connection": pg_items, "sql": "SELECT label FROM items WHERE id = :id",
              "params": {"id": 7}},
    )  # fmt: skip
    assert caplog.records, "the failed query was not logged"
    assert canary not in caplog.text and "item 7" not in caplog.text


def test_each_call_has_an_access_log_line_and_a_request_id(
    rest: RestGateway, pg_items: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fabric.access")
    ok = rest.call(
        "POST", "/api/v1/query", "developer", headers={"x-request-id": "portal-42"},
        json={
            "connection": pg_items, "sql": "SELECT id FROM items WHERE id < :n", "params": {"n": 3}
        },
    )  # fmt: skip
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "portal-42"
    refused = rest.call("GET", "/api/v1/audit", "developer", headers={"x-request-id": "<bad>"})
    assert refused.status_code == 403
    fresh = refused.headers["x-request-id"]
    assert fresh != "<bad>" and len(fresh) == 32
    lines = {r.request_id: r for r in caplog.records if r.name == "fabric.access"}  # type: ignore[attr-defined]
    query = lines["portal-42"]
    assert (query.protocol, query.method, query.status) == (  # type: ignore[attr-defined]
        "rest", "POST /api/v1/query", "OK"
    )  # fmt: skip
    assert query.principal == "developer@example.com" and query.rows == 2  # type: ignore[attr-defined]
    assert query.connection == pg_items  # type: ignore[attr-defined]
    assert lines[fresh].status == "403"  # type: ignore[attr-defined]
