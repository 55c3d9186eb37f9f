"""Flight session options (SetSessionOptions, GetSessionOptions, CloseSession) through
the ADBC Flight SQL driver's connection options, and pyarrow's Flight client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from fabric.v1 import flight_pb2 as fl
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.flight_clients import FlightClient, connect, grpc_code

OPTION = "adbc.flight.sql.session.option."
ERASE = "adbc.flight.sql.session.optionerase."
ALL_OPTIONS = "adbc.flight.sql.session.options"
COOKIES = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}
ORDERS = "SELECT id FROM orders ORDER BY id"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path, flight=True)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


def _rows(conn: Any, text: str = ORDERS) -> int:
    with conn.cursor() as cur:
        cur.execute(text)
        return int(cur.fetch_arrow_table().num_rows)


def test_session_options_stand_in_for_the_headers(harness: Harness) -> None:
    sessions = harness.gateway.gateway.flight.sessions
    with connect(harness.gateway.flight_uri, connection=None, options=COOKIES) as conn:
        conn.adbc_connection.set_options(**{f"{OPTION}connection": "shop"})
        conn.adbc_connection.set_options(**{f"{OPTION}max_rows": 7})
        assert len(sessions) == 1
        assert json.loads(conn.adbc_connection.get_option(ALL_OPTIONS)) == {
            "connection": "shop",
            "max_rows": 7,
        }
        assert _rows(conn) == 7
        conn.adbc_connection.set_options(**{f"{ERASE}max_rows": ""})
        assert _rows(conn) == 20_000
        assert json.loads(conn.adbc_connection.get_option(ALL_OPTIONS)) == {"connection": "shop"}
    # Closing the connection closes its session.
    assert len(sessions) == 0


def test_a_header_wins_over_the_session(harness: Harness) -> None:
    with connect(
        harness.gateway.flight_uri,
        connection=None,
        headers={"x-fabric-max-rows": "3"},
        options=COOKIES,
    ) as conn:
        conn.adbc_connection.set_options(
            **{f"{OPTION}connection": "shop", f"{OPTION}max_rows": "9"}
        )
        assert _rows(conn) == 3


def test_a_session_cache_lifetime_serves_repeats_from_memory(harness: Harness) -> None:
    text = "SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY country"
    with connect(harness.gateway.flight_uri, options=COOKIES) as conn:
        conn.adbc_connection.set_options(**{f"{OPTION}cache_ttl": 30.0})
        assert _rows(conn, text) == 3
        ran = len(harness.executed)
        assert _rows(conn, text) == 3
        assert len(harness.executed) == ran  # served from memory
    with connect(harness.gateway.flight_uri, options=COOKIES) as conn:
        assert _rows(conn, text) == 3  # a new session without the option: run again
        assert len(harness.executed) == ran + 1


def test_a_session_timeout_bounds_the_query(harness: Harness) -> None:
    harness.gate.clear()  # the source holds every query until the gate opens
    try:
        with connect(harness.gateway.flight_uri, options=COOKIES) as conn:
            conn.adbc_connection.set_options(**{f"{OPTION}timeout": 0.3})
            with pytest.raises(adbc_driver_manager.Error) as timed_out:
                _rows(conn)
            assert grpc_code(timed_out.value).name == "DEADLINE_EXCEEDED"
    finally:
        harness.gate.set()


def test_bad_names_and_values_are_refused_and_change_nothing(harness: Harness) -> None:
    with connect(harness.gateway.flight_uri, connection=None, options=COOKIES) as conn:
        conn.adbc_connection.set_options(**{f"{OPTION}connection": "shop"})
        for name, value in (
            ("max_rows", 0),
            ("max_rows", "many"),
            ("timeout", -1.0),
            ("cache_ttl", "soon"),
            ("colour", "blue"),
        ):
            with pytest.raises(adbc_driver_manager.Error):
                conn.adbc_connection.set_options(**{f"{OPTION}{name}": value})
        assert json.loads(conn.adbc_connection.get_option(ALL_OPTIONS)) == {"connection": "shop"}


def test_a_session_is_its_callers_own_and_gone_once_closed(harness: Harness) -> None:
    uri = harness.gateway.flight_uri
    cookies = CookieJar()
    with FlightClient(uri, {}, middleware=[cookies]) as client:
        request = fl.SetSessionOptionsRequest(
            session_options={"connection": fl.SessionOptionValue(string_value="shop")}
        )
        (body,) = client.action("SetSessionOptions", request.SerializeToString())
        assert not fl.SetSessionOptionsResult.FromString(body).errors
    (set_cookie,) = cookies.received
    assert set_cookie.startswith("arrow_flight_session_id=")
    cookie = {"cookie": set_cookie}
    with FlightClient(uri, cookie) as client:
        (body,) = client.action("GetSessionOptions", b"")
        options = fl.GetSessionOptionsResult.FromString(body).session_options
        assert options["connection"].string_value == "shop"
    with (
        FlightClient(uri, {**cookie, "x-tenant": "other"}) as client,
        pytest.raises(pa.ArrowKeyError, match=r"not found.*closed or expired"),
    ):
        client.action("GetSessionOptions", b"")
    with FlightClient(uri, cookie) as client:
        (body,) = client.action("CloseSession", b"")
        assert fl.CloseSessionResult.FromString(body).status == fl.CloseSessionResult.CLOSED
        with pytest.raises(pa.ArrowKeyError, match=r"not found.*closed or expired"):
            client.action("GetSessionOptions", b"")


class CookieJar(flight.ClientMiddlewareFactory):  # type: ignore[misc]  # pyarrow: no stubs
    """The `set-cookie` headers the server answers with."""

    def __init__(self) -> None:
        self.received: list[str] = []

    def start_call(self, info: flight.CallInfo) -> flight.ClientMiddleware:
        jar = self

        class Reader(flight.ClientMiddleware):  # type: ignore[misc]
            def received_headers(self, headers: dict[str, list[str]]) -> None:
                jar.received += headers.get("set-cookie", [])

        return Reader()
