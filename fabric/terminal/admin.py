"""`fabric connection ...`, `fabric catalog ...` and `fabric audit list`: administration
through a gateway's ConnectionService and CatalogService (or, with `--local`, a private
one over FABRIC_HOME), printed for a terminal."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from connectors import registry
from fabric.client import FabricClient
from fabric.errors import FabricError
from fabric.terminal.arguments import (
    UsageError,
    parse_setting,
    read_password,
    settings_for,
)
from fabric.v1 import platform_pb2 as pb

__all__ = ["run_audit", "run_catalog", "run_connection"]

Out = Callable[[str], None]


# -- how things print ------------------------------------------------------------------


def _setting_text(value: pb.SettingValue) -> str:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return str(getattr(value, kind)) if kind else ""


def describe_connection(connection: pb.Connection) -> str:
    stages = ", ".join(
        f"{stage.stage}{' (password)' if stage.has_password else ''}" for stage in connection.stages
    )
    return f"{connection.name}\t{connection.kind}\tstages: {stages}"


def describe_entity(entity: pb.Entity) -> str:
    columns = ", ".join(f"{c.name} {c.source_type}" for c in entity.columns)
    key = f" key({', '.join(entity.primary_key)})" if entity.primary_key else ""
    return f"{entity.name} = {entity.schema}.{entity.table}{key}: {columns}"


def describe_table(table: pb.Table) -> list[str]:
    key = f" key({', '.join(table.primary_key)})" if table.primary_key else ""
    lines = [f"{table.schema}.{table.name} [{table.kind}]{key}"]
    for column in table.columns:
        kind = column.arrow_type if column.supported and column.arrow_type else "unsupported"
        null = "" if column.nullable else " not null"
        lines.append(f"    {column.name}: {column.source_type} -> {kind}{null}")
    for fk in table.foreign_keys:
        lines.append(
            f"    fk ({', '.join(fk.columns)}) -> {fk.referenced_schema}."
            f"{fk.referenced_table} ({', '.join(fk.referenced_columns)})"
        )
    return lines


def _stages_line(connection: pb.Connection) -> str:
    return ", ".join(
        f"{stage.stage}{' (password)' if stage.has_password else ''}" for stage in connection.stages
    )


# -- connection ------------------------------------------------------------------------


def _settings(kind: str, given: Iterable[str] | None) -> dict[str, Any]:
    return settings_for(registry.get(kind), [parse_setting(s) for s in given or []])


def _password(args: argparse.Namespace, what: str = "password") -> str | None:
    return read_password(from_stdin=args.password_stdin, prompt=args.password_prompt, what=what)


def _not_stored(error: FabricError) -> FabricError:
    """A failed test on create (the gateway stored nothing): say how to go on."""
    if "was not stored" in error.message:
        return type(error)(
            f"{error.message}: fix the settings, or pass --no-verify to store the connection "
            "without testing it",
            sqlstate=error.sqlstate,
        )
    return error


def run_connection(args: argparse.Namespace, client: FabricClient, out: Out = print) -> None:
    if args.action == "create":
        spec = registry.get(args.kind)
        settings = _settings(spec.kind, args.set)
        verify = not args.no_verify
        missing = [s.name for s in spec.settings if s.required and s.name not in settings]
        if verify and missing:
            raise UsageError(
                f"{spec.kind} connections need "
                + ", ".join(f"--set {name}=..." for name in missing)
                + " (or --no-verify to store an incomplete connection and add them later)"
            )
        password = _password(args)
        try:
            connection = client.create_connection(
                args.name, spec.kind, settings, password=password, stage=args.stage, verify=verify
            )
        except FabricError as error:
            raise _not_stored(error) from None
        tested = ", tested" if verify else ", not tested (--no-verify)"
        out(
            f"created connection {connection.name!r} ({connection.kind}) for stage "
            f"{args.stage!r}{tested}"
            + (", password sealed in the secret store" if password else "")
        )
    elif args.action == "list":
        for connection in client.list_connections():
            out(describe_connection(connection))
    elif args.action == "show":
        connection = client.get_connection(args.name)
        out(
            f"{connection.name} ({connection.kind}), version {connection.version}, "
            f"catalog version {connection.catalog_version}"
        )
        for stage in connection.stages:
            shown = " ".join(
                f"{key}={_setting_text(value)}" for key, value in sorted(stage.settings.items())
            )
            password = " password=(set)" if stage.has_password else ""
            out(f"  {stage.stage}: {shown}{password}")
    elif args.action == "delete":
        removed = client.delete_connection(args.name)
        out(f"deleted connection {args.name!r} and its selection; {removed} secret(s) removed")
    elif args.action == "test":
        answer = client.test_connection(args.name, args.stage_name or "")
        out(
            f"connection {args.name!r} works in stage {answer.stage!r} "
            f"({answer.elapsed_us / 1000:.0f} ms)"
        )
    elif args.action == "update":
        connection = client.get_connection(args.name)
        new_settings = _settings(connection.kind, args.set) if args.set else None
        password = _password(args, "new password")
        updated = client.update_connection(
            args.name,
            stage=args.stage,
            settings=new_settings,
            password=password,
            clear_password=args.clear_password,
            remove_stages=args.remove_stage or [],
            expected_version=args.expected_version,
            verify=args.verify,
        )
        out(
            f"updated connection {updated.name!r} to version {updated.version}; "
            f"stages: {_stages_line(updated)}"
        )
    else:  # pragma: no cover - argparse allows only the actions above
        raise UsageError(f"unknown action {args.action!r}")


# -- catalog ---------------------------------------------------------------------------


def run_catalog(args: argparse.Namespace, client: FabricClient, out: Out = print) -> None:
    stage = args.stage_name or ""
    if args.action == "discover":
        for table in client.discover(args.connection, args.schema or [], stage):
            for line in describe_table(table):
                out(line)
    elif args.action == "select":
        if args.all:
            if args.table:
                raise UsageError("name a TABLE or pass --all, not both")
            answer = client.select_all(args.connection, args.schema or [], stage)
        elif args.table:
            columns = (
                [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else []
            )
            answer = client.select(
                args.connection, args.table, columns, args.entity_name or "", stage
            )
        else:
            raise UsageError("name a TABLE to select (schema.table or table), or pass --all")
        for entity in answer.entities:
            out(f"selected {describe_entity(entity)}")
        out(f"catalog version {answer.catalog_version}")
    elif args.action == "unselect":
        out(f"catalog version {client.unselect(args.connection, args.entities)}")
    elif args.action == "list":
        for entity in client.list_entities(args.connection).entities:
            out(describe_entity(entity))
    elif args.action == "refresh":
        report = client.refresh(args.connection, stage)
        for drift in report.drift:
            where = f".{drift.column}" if drift.column else ""
            types = (
                f" {drift.old_type or '-'} -> {drift.new_type or '-'}"
                if drift.old_type or drift.new_type
                else ""
            )
            detail = f" ({drift.detail})" if drift.detail else ""
            out(
                f"{drift.kind}: {drift.entity} = {drift.schema}.{drift.table}{where}{types}{detail}"
            )
        if not report.drift:
            out("no drift")
        if report.catalog_version != report.previous_catalog_version:
            out(f"catalog version {report.previous_catalog_version} -> {report.catalog_version}")
        else:
            out(f"nothing changed; catalog version {report.catalog_version}")
    else:  # pragma: no cover - argparse allows only the actions above
        raise UsageError(f"unknown action {args.action!r}")


def run_audit(args: argparse.Namespace, client: FabricClient, out: Out = print) -> None:
    """`fabric audit list`: administrative changes, newest first; never a secret."""
    for event in client.list_audit(args.connection or "", args.limit):
        details = " ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
        out(
            f"{event.at}\t{event.actor}\t{event.action}\t"
            f"{event.connection or '-'}\t{event.stage or '-'}\t{details}"
        )


def run_queries(args: argparse.Namespace, client: FabricClient, out: Out = print) -> None:
    """`fabric queries list|cancel`: the tenant's running queries across a stage's
    replicas (metadata and the SQL's shape only, never a value), or cancel one."""
    if args.action == "cancel":
        replica = client.cancel_query(args.id, args.stage or "")
        out(f"cancelled {args.id} on {replica}")
        return
    answer = client.list_running_queries(args.stage or "")
    out("id\trequest_id\telapsed_s\tphase\trows\tprincipal\tconnection\tprotocol\tsql")
    for query in answer.queries:
        out(
            f"{query.id}\t{query.request_id or '-'}\t{query.elapsed_seconds:.1f}\t"
            f"{query.phase}\t{query.rows}\t"
            f"{query.principal}\t{query.connection}\t{query.protocol}\t{query.sql_shape}"
        )
    out(f"{len(answer.queries)} running on {', '.join(answer.replicas) or 'no replica'}")
    if answer.truncated:
        out("(a replica runs more than one bus message lists: its oldest are shown)")
