"""Clients of the Flight SQL door for tests: the ADBC Flight SQL driver (what apps use)
and pyarrow's Flight client for the calls ADBC does not make (keys, CancelFlightInfo)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import grpc
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf.message import Message

from fabric.api.flight.wire import pack

HEADER = "adbc.flight.sql.rpc.call_header."


def connect(
    uri: str,
    *,
    connection: str | None = "shop",
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
) -> flight_sql.Connection:
    """An ADBC DBAPI connection to the door, naming `connection` in its call headers."""
    db_kwargs: dict[str, str] = dict(options or {})
    if connection is not None:
        db_kwargs[f"{HEADER}x-fabric-connection"] = connection
    for name, value in (headers or {}).items():
        db_kwargs[f"{HEADER}{name}"] = value
    if token is not None:
        db_kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {token}"
    return flight_sql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def grpc_code(error: adbc_driver_manager.Error) -> grpc.StatusCode:
    """The gRPC status the server answered: the ADBC Flight SQL driver names it in its
    message, as Go spells it ("... (InvalidArgument; Prepare)")."""
    go_name = str(error).rsplit(" (", 1)[1].split(";", 1)[0]
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", go_name).upper()
    return grpc.StatusCode.CANCELLED if name == "CANCELED" else grpc.StatusCode[name]


def fabric_code(error: adbc_driver_manager.Error) -> str | None:
    """The gateway's error code, from the trailers the driver passes on as details."""
    for key, value in error.details or []:
        if key in (b"fabric-error-code", "fabric-error-code"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def message_of(error: adbc_driver_manager.Error) -> str:
    """The server's message, without the driver's prefix and context."""
    text = str(error)
    start = text.index("[FlightSQL] ") + len("[FlightSQL] ")
    end = text.rindex(" (")
    return text[start:end]


class FlightClient:
    """pyarrow's Flight client with the gateway's headers on every call."""

    def __init__(self, uri: str, headers: Mapping[str, str], **kwargs: Any) -> None:
        self.client = flight.connect(uri, **kwargs)
        self.options = flight.FlightCallOptions(
            headers=[(k.encode(), v.encode()) for k, v in headers.items()]
        )

    def info(self, command: Message) -> flight.FlightInfo:
        descriptor = flight.FlightDescriptor.for_command(pack(command))
        return self.client.get_flight_info(descriptor, self.options)

    def read(self, command: Message) -> pa.Table:
        info = self.info(command)
        return self.client.do_get(info.endpoints[0].ticket, self.options).read_all()

    def action(self, kind: str, body: bytes) -> list[bytes]:
        results = self.client.do_action(flight.Action(kind, body), self.options)
        return [result.body.to_pybytes() for result in results]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FlightClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
