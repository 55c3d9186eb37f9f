"""Proto freshness, parameter values on the wire, the status table, settings, CLI values."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from fabric import errors
from fabric.api.status import GRPC_STATUS, error_from_rpc, status_for
from fabric.config import Settings
from fabric.messaging.query_rpc.wire import error_body, error_from_body
from fabric.proto_values import from_proto, to_proto
from fabric.terminal.arguments import parse_param, parse_setting

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(1 << 63),
        (1 << 63) - 1,
        1.5,
        float("inf"),
        "",
        "ünï 🚀",
        b"\x00\xff",
        Decimal("12345678901234567890.123456789"),
        dt.date(2024, 2, 29),
        dt.time(23, 59, 59, 999999),
        dt.datetime(2024, 1, 1, 12, 30),
        dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    ],
)
def test_parameter_values_round_trip_exactly(value: object) -> None:
    back = from_proto("p", to_proto("p", value))
    assert back == value and type(back) is type(value)
    if isinstance(value, dt.datetime):
        assert isinstance(back, dt.datetime)
        assert back.utcoffset() == value.utcoffset()


def test_integers_beyond_int64_travel_as_decimals() -> None:
    assert from_proto("p", to_proto("p", 1 << 70)) == Decimal(1 << 70)


def test_unbindable_types_and_bad_values_are_refused_without_the_value() -> None:
    with pytest.raises(errors.InvalidArgument, match="'p' has type set"):
        to_proto("p", {1})
    from fabric.v1 import query_pb2 as pb

    with pytest.raises(errors.InvalidArgument) as caught:
        from_proto("when", pb.Value(date_value="secret-2024-13-45"))
    assert "secret" not in caught.value.message and "'when'" in caught.value.message
    with pytest.raises(errors.InvalidArgument):
        from_proto("n", pb.Value(decimal_value="NaN"))


def test_every_error_class_has_a_status_and_survives_the_wire() -> None:
    for cls in errors.ALL_ERRORS[1:]:  # the root shares "internal" with InternalError
        error = cls("message", sqlstate="22012")
        status = status_for(error)
        assert status == GRPC_STATUS[cls]
        rebuilt = error_from_rpc(status, "message", cls.code, "22012")
        assert type(rebuilt) is cls and rebuilt.sqlstate == "22012"
    assert status_for(errors.QueryRejected("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(errors.SourceUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert (
        type(error_from_rpc(grpc.StatusCode.DEADLINE_EXCEEDED, "", None, None))
        is errors.DeadlineExceeded
    )


def test_a_retry_hint_survives_the_wire_and_the_bus() -> None:
    error = errors.ResourceExhausted("busy", retry_after=1.5)
    rebuilt = error_from_rpc(status_for(error), "busy", error.code, None, "1500")
    assert type(rebuilt) is errors.ResourceExhausted and rebuilt.retry_after == 1.5
    assert error_from_rpc(status_for(error), "busy", error.code, None, "junk").retry_after is None
    assert error_from_rpc(status_for(error), "busy", error.code, None).retry_after is None
    forwarded, _ = error_from_body(error_body(error))
    assert type(forwarded) is errors.ResourceExhausted and forwarded.retry_after == 1.5
    assert error_from_body(error_body(errors.NotFound("gone")))[0].retry_after is None


def test_settings_from_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"FABRIC_HOME": str(tmp_path), "FABRIC_MAX_ROWS": "50", "FABRIC_CACHE_MAX_TTL": "2.5"},
        metrics_port=0,
    )
    assert settings.home == tmp_path and settings.max_rows == 50
    assert settings.cache_max_ttl == 2.5 and settings.metrics_port == 0
    assert settings.metadata_path == tmp_path / "metadata.sqlite"
    with pytest.raises(errors.InvalidArgument, match="FABRIC_MAX_ROWS"):
        Settings.from_env({"FABRIC_MAX_ROWS": "many"})
    with pytest.raises(errors.InvalidArgument, match="max_rows"):
        Settings.from_env({"FABRIC_MAX_ROWS": "0"})


def test_shares_and_the_memory_budget_are_settings() -> None:
    settings = Settings.from_env(
        {
            "FABRIC_PRINCIPAL_MAX_QUERIES": "2",
            "FABRIC_TENANT_MAX_STATEMENTS": "9",
            "FABRIC_MEMORY_BUDGET": str(1 << 30),
            "FABRIC_ADMISSION_WAIT": "0.5",
        }
    )
    assert settings.principal_max_queries == 2 and settings.tenant_max_statements == 9
    assert settings.memory_budget == 1 << 30 and settings.admission_wait == 0.5
    with pytest.raises(errors.InvalidArgument, match="FABRIC_MEMORY_BUDGET"):
        Settings.from_env({"FABRIC_MEMORY_BUDGET": str(64 << 20)})
    with pytest.raises(errors.InvalidArgument, match="short_query_reserve"):
        Settings.from_env({"FABRIC_SHORT_QUERY_RESERVE": "-1"})
    with pytest.raises(errors.InvalidArgument, match="principal_max_statements"):
        Settings.from_env({"FABRIC_PRINCIPAL_MAX_STATEMENTS": "0"})


def test_cli_parameters_are_typed() -> None:
    assert parse_param("n=5") == ("n", 5)
    assert parse_param("x=2.5") == ("x", 2.5)
    assert parse_param("s=hello world") == ("s", "hello world")
    assert parse_param("z=null") == ("z", None)
    assert parse_param("code:str=007") == ("code", "007")
    assert parse_param("d:date=2024-02-29") == ("d", dt.date(2024, 2, 29))
    assert parse_param("m:decimal=1.10") == ("m", Decimal("1.10"))
    assert parse_param("t:timestamp=2024-01-01T00:00:00+02:00")[1].utcoffset() == dt.timedelta(
        hours=2
    )
    assert parse_param("b:bool=TRUE") == ("b", True)
    for bad in ("n", "1x=2", "d:date=yesterday", "q:weird=1", "b:bool=maybe"):
        with pytest.raises(errors.InvalidArgument):
            parse_param(bad)
    assert parse_setting("port=5432") == ("port", "5432")  # typed by the kind's settings
    assert parse_setting("host=db.local") == ("host", "db.local")
