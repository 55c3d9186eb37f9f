"""The `fabric` command: serve, manage connections and the catalog, query, preview, demo."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import re
import signal
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from connectors import registry
from fabric.app.process_role import ProcessRole
from fabric.catalog.manager import CatalogManager
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.console import write_result
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import FabricError, InvalidArgument, SourceUnavailable
from fabric.model import ALL_STAGES, Entity, SettingValue
from fabric.observability.logging import configure as configure_logging

if TYPE_CHECKING:
    from fabric.platform.connections import ConnectionAdmin

_TYPED_PARAM = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<type>[a-z]+))?=(?P<value>.*)$", re.DOTALL
)


# -- argument values --------------------------------------------------------------------


def parse_setting(text: str) -> tuple[str, SettingValue]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidArgument(f"settings are KEY=VALUE, got {text!r}")
    value: SettingValue = raw
    if re.fullmatch(r"-?\d+", raw):
        value = int(raw)
    elif raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    return key, value


def parse_param(text: str) -> tuple[str, Any]:
    """`name=value` (int, float, true/false, null or text, inferred) or `name:type=value`
    with type one of str, int, float, decimal, bool, date, time, timestamp, bytes (hex),
    null."""
    match = _TYPED_PARAM.match(text)
    if match is None:
        raise InvalidArgument("parameters are NAME=VALUE or NAME:TYPE=VALUE")
    name, kind, raw = match["name"], match["type"], match["value"]
    try:
        return name, _convert(kind, raw)
    except (ValueError, ArithmeticError):
        raise InvalidArgument(f"parameter {name!r} is not a valid {kind}") from None


def _convert(kind: str | None, raw: str) -> Any:
    if kind is None:
        if raw == "null":
            return None
        if raw in ("true", "false"):
            return raw == "true"
        if re.fullmatch(r"-?\d+", raw):
            return int(raw)
        if re.fullmatch(r"-?\d+\.\d*([eE][-+]?\d+)?", raw):
            return float(raw)
        return raw
    converters: dict[str, Any] = {
        "str": str,
        "int": int,
        "float": float,
        "decimal": Decimal,
        "bool": lambda v: {"true": True, "false": False}[v.lower()],
        "date": dt.date.fromisoformat,
        "time": dt.time.fromisoformat,
        "timestamp": dt.datetime.fromisoformat,
        "bytes": bytes.fromhex,
        "null": lambda v: None,
    }
    if kind not in converters:
        raise InvalidArgument(
            f"unknown parameter type {kind!r}; use one of " + ", ".join(sorted(converters))
        )
    try:
        return converters[kind](raw)
    except KeyError:
        raise ValueError(kind) from None


def _describe_entity(entity: Entity) -> str:
    columns = ", ".join(f"{c.name} {c.source_type}" for c in entity.columns)
    key = f" key({', '.join(entity.primary_key)})" if entity.primary_key else ""
    return f"{entity.name} = {entity.schema}.{entity.table}{key}: {columns}"


# -- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """`fabric serve --role all|platform|runtime [--stage NAME]` (see fabric/app/processes.py).
    SIGTERM or SIGINT stops it: running queries get FABRIC_SHUTDOWN_GRACE seconds (a
    runtime replica: its bus queries, then its gRPC calls), and the process is gone
    twice that plus EXIT_AFTER_GRACE seconds after the signal at the latest
    (fabric/app/shutdown.py)."""
    from fabric.app.processes import open_process
    from fabric.app.shutdown import EXIT_AFTER_GRACE, ExitWatchdog

    watchdog = ExitWatchdog(2 * settings.shutdown_grace + EXIT_AFTER_GRACE)

    async def run() -> None:
        process = await open_process(
            args.role,
            settings,
            stage=args.stage_name,
            listen=args.listen,
            insecure=args.insecure,
        )
        try:
            ready = await process.start()
        except BaseException:
            await process.stop(grace=0)
            raise
        print(ready, flush=True)
        # Everything loaded so far (modules, the catalog, pools) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise walk
        # it again and again, a pause felt by every query in flight.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        watchdog.arm()
        print("stopping: letting running queries finish", flush=True)
        await process.stop(grace=settings.shutdown_grace)

    try:
        asyncio.run(run())
    except OSError as error:  # a port in use, a socket refused
        raise SourceUnavailable(
            f"cannot start the {args.role} process: {error.strerror or type(error).__name__}"
        ) from None
    return 0


def _manager(settings: Settings) -> CatalogManager:
    from fabric.app.parts import catalog_manager, open_secret_store, open_store

    secrets = open_secret_store(settings)
    return catalog_manager(open_store(settings), secrets.get)


def _admin(settings: Settings) -> ConnectionAdmin:
    """Connection administration on the configured stores. No runtime runs in this
    process: running gateways see the new catalog version on their next call."""
    from fabric.app.parts import connection_admin, open_secret_store, open_store

    return connection_admin(open_store(settings), open_secret_store(settings))


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password_prompt:
        import getpass

        password = getpass.getpass("password: ")
    else:
        return None
    if not password:
        raise InvalidArgument("the password is empty")
    return password


def cmd_connection(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.platform.connections import StageInput

    admin = _admin(settings)
    tenant = args.tenant
    if args.action == "create":
        spec = registry.get(args.kind)
        # Names and types now; what is missing shows when the connection is tested.
        given = dict(parse_setting(s) for s in args.set or [])
        stage_settings = spec.check_settings(given, complete=False)
        password = _read_password(args)
        connection = admin.create(
            tenant,
            args.name,
            spec.kind,
            {args.stage: StageInput(stage_settings, password)},
        )
        print(
            f"created connection {connection.name!r} ({connection.kind}) "
            f"for stage {args.stage!r}"
            + (", password sealed in the secret store" if password else "")
        )
    elif args.action == "list":
        for connection in admin.list(tenant):
            stages = ", ".join(sorted(connection.stages))
            print(f"{connection.name}\t{connection.kind}\tstages: {stages}")
    elif args.action == "delete":
        admin.delete(tenant, args.name)
        print(f"deleted connection {args.name!r} and its secrets")
    elif args.action == "test":
        admin.manager.test_connection(tenant, args.name, args.stage_name)
        print(f"connection {args.name!r} works in stage {args.stage_name!r}")
    elif args.action == "update":
        _update_connection(args, admin)
    return 0


def _update_connection(args: argparse.Namespace, admin: ConnectionAdmin) -> None:
    """`fabric connection update`: one stage's settings and/or password, or removals."""
    from fabric.platform.connections import StageInput

    password = _read_password(args)
    stage_settings = dict(parse_setting(s) for s in args.set or [])
    stages = (
        {args.stage: StageInput(stage_settings, password)}
        if stage_settings or password is not None
        else {}
    )
    connection = admin.update(
        args.tenant,
        args.name,
        stages=stages,
        remove_stages=args.remove_stage or [],
        clear_passwords=[args.stage] if args.clear_password else [],
        expected_version=args.expected_version,
        verify=args.verify,
    )
    print(
        f"updated connection {connection.name!r} to version {connection.version}; stages: "
        + ", ".join(
            f"{stage}{' (password)' if stage in connection.secret_refs else ''}"
            for stage in sorted(connection.stages)
        )
    )


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    manager = _manager(settings)
    tenant, stage = args.tenant, args.stage_name
    if args.action == "discover":
        for table in manager.discover(tenant, args.connection, stage, args.schema or None):
            key = f" key({', '.join(table.primary_key)})" if table.primary_key else ""
            print(f"{table.schema}.{table.name} [{table.kind.value}]{key}")
            for column in table.columns:
                kind = str(column.arrow_type) if column.arrow_type is not None else "unsupported"
                null = "" if column.nullable else " not null"
                print(f"    {column.name}: {column.source_type} -> {kind}{null}")
            for fk in table.foreign_keys:
                print(
                    f"    fk ({', '.join(fk.columns)}) -> {fk.referenced_schema}."
                    f"{fk.referenced_table} ({', '.join(fk.referenced_columns)})"
                )
    elif args.action == "select":
        if args.all:
            entities = manager.select_all(tenant, args.connection, stage, args.schema or None)
        elif args.table:
            columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
            entities = [
                manager.select(
                    tenant, args.connection, stage, args.table, columns, args.entity_name
                )
            ]
        else:
            raise InvalidArgument("name a TABLE to select, or pass --all")
        for entity in entities:
            print(f"selected {_describe_entity(entity)}")
        print(f"catalog version {manager.catalog_version(tenant, args.connection)}")
    elif args.action == "unselect":
        version = manager.unselect(tenant, args.connection, args.entities)
        print(f"catalog version {version}")
    elif args.action == "list":
        for entity in manager.list_entities(tenant, args.connection):
            print(_describe_entity(entity))
    elif args.action == "refresh":
        from fabric.platform.refresh import refresh_catalog

        report = refresh_catalog(manager, tenant, args.connection, stage)
        for drift in report.drift:
            where = f".{drift.column}" if drift.column else ""
            types = (
                f" {drift.old_type or '-'} -> {drift.new_type or '-'}"
                if drift.old_type or drift.new_type
                else ""
            )
            detail = f" ({drift.detail})" if drift.detail else ""
            print(
                f"{drift.kind.value}: {drift.entity} = {drift.schema}.{drift.table}"
                f"{where}{types}{detail}"
            )
        if not report.drift:
            print("no drift")
        print(f"catalog version {report.previous_version} -> {report.catalog_version}")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """`fabric audit list`: administrative changes, newest first; never a secret."""
    manager = _manager(settings)
    for event in manager.store.list_audit(
        args.tenant, connection=args.connection, limit=args.limit
    ):
        details = " ".join(f"{k}={v}" for k, v in event.details.items())
        print(
            f"{event.at.isoformat(timespec='seconds')}\t{event.actor}\t{event.action}\t"
            f"{event.connection or '-'}\t{event.stage or '-'}\t{details}"
        )
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    """--token, else FABRIC_TOKEN, else (FABRIC_AUTH=local) a short-lived token minted with
    the local key, whose file only the gateway's owner can read."""
    import os

    token = args.token or os.environ.get("FABRIC_TOKEN")
    if token:
        return str(token)
    if settings.auth == "local" and settings.token_key_path.exists():
        from fabric.app.parts import local_token

        return local_token(
            settings, tenant=args.tenant, stage=args.stage_name, subject="fabric-cli", ttl=300
        )
    return None


def _client(args: argparse.Namespace, settings: Settings) -> FabricClient:
    from fabric.client import FabricClient

    return FabricClient(
        args.address or settings.listen, _token(args, settings), timeout=args.timeout
    )


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    params = dict(parse_param(p) for p in args.param or [])
    with _client(args, settings) as client:
        result = client.execute(args.connection, args.sql, params, args.cache_ttl, args.max_rows)
    write_result(result.table, args.format)
    s = result.summary
    print(
        f"-- {s.rows} rows{' (truncated)' if s.truncated else ''}"
        f"{', from cache' if s.from_cache else ''}, {s.elapsed_us / 1000:.1f} ms in the gateway",
        file=sys.stderr,
    )
    return 0


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        write_result(client.preview(args.connection, args.entity, args.limit), args.format)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.app.parts import local_token

    print(
        local_token(
            settings,
            tenant=args.tenant,
            stage=args.stage_name,
            role=args.role,
            subject=args.subject,
            ttl=args.ttl,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.demo import run_demo

    run_demo(settings, scale=args.scale)
    return 0


def _add_password_sources(
    parser: argparse.ArgumentParser, password: str
) -> argparse._MutuallyExclusiveGroup:
    """--password-stdin and --password-prompt, one or the other (`_read_password` reads
    them); the group, for a command that has another way to say what becomes of it."""
    sources = parser.add_mutually_exclusive_group()
    sources.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"read {password} from the first line of standard input",
    )
    sources.add_argument(
        "--password-prompt", action="store_true", help=f"ask for {password} without echoing it"
    )
    return sources


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabric", description=__doc__)
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--listen", help="address to listen on (default FABRIC_LISTEN or 127.0.0.1:50051)"
    )
    serve.add_argument(
        "--role",
        default="all",
        choices=[role.value for role in ProcessRole],
        help="all: both planes in one process (default); platform: the "
        "gRPC gateway, forwarding queries over NATS; runtime: one "
        "replica of --stage on NATS",
    )
    serve.add_argument("--stage", dest="stage_name", help="the stage a runtime replica serves")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without TLS (not for production)",
    )
    serve.set_defaults(func=cmd_serve)

    conn = sub.add_parser("connection", help="manage connections").add_subparsers(
        dest="action", required=True
    )
    create = conn.add_parser(
        "create",
        help="register a connection",
        epilog="settings by kind:\n" + "\n".join(s.describe() for s in registry.specs()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name")
    create.add_argument("--kind", required=True, choices=registry.kinds())
    create.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a setting (host, port, database, user, path, ...); repeat",
    )
    create.add_argument(
        "--stage", default=ALL_STAGES, help="stage these settings are for (default: all stages)"
    )
    _add_password_sources(create, "the password")
    conn.add_parser("list", help="list connections")
    delete = conn.add_parser("delete", help="delete a connection and its selection")
    delete.add_argument("name")
    test = conn.add_parser("test", help="connect and run a trivial query")
    test.add_argument("name")
    test.add_argument("--stage", dest="stage_name", default=DEFAULT_STAGE)
    update = conn.add_parser("update", help="change a stage's settings or password")
    update.add_argument("name")
    update.add_argument(
        "--stage", default=ALL_STAGES, help="stage to change (default: the all-stages settings)"
    )
    update.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="the stage's settings, replacing its old ones; repeat",
    )
    new_secret = _add_password_sources(update, "the new password")
    new_secret.add_argument(
        "--clear-password", action="store_true", help="remove the stage's password"
    )
    update.add_argument(
        "--remove-stage",
        action="append",
        metavar="STAGE",
        help="remove a stage's settings and password; repeat",
    )
    update.add_argument(
        "--expected-version", type=int, help="apply only if the connection is still at this version"
    )
    update.add_argument(
        "--verify", action="store_true", help="test the changed stage before storing anything"
    )
    conn_parser = sub.choices["connection"]
    conn_parser.set_defaults(func=cmd_connection)

    cat = sub.add_parser("catalog", help="discover and select what apps may query")
    cat.set_defaults(func=cmd_catalog)
    cat_sub = cat.add_subparsers(dest="action", required=True)
    for name, text in (
        ("discover", "list remote tables, columns and keys"),
        ("select", "select a table (some columns, or all) for apps"),
        ("unselect", "remove entities from the selection"),
        ("list", "list selected entities"),
        ("refresh", "re-read the selected tables and report drift"),
    ):
        p = cat_sub.add_parser(name, help=text)
        p.add_argument("connection")
        p.add_argument("--stage", dest="stage_name", default=DEFAULT_STAGE)
        if name in ("discover", "select"):
            p.add_argument("--schema", action="append", help="restrict to a schema; repeat")
        if name == "select":
            p.add_argument("table", nargs="?", help="schema.table or table")
            p.add_argument("--columns", help="comma-separated columns (default: all)")
            p.add_argument("--as", dest="entity_name", help="entity name apps will use")
            p.add_argument("--all", action="store_true", help="select every table")
        if name == "unselect":
            p.add_argument("entities", nargs="+")

    for name, func in (("query", cmd_query), ("preview", cmd_preview)):
        p = sub.add_parser(
            name,
            help="run a query through the gateway"
            if name == "query"
            else "show the first rows of a selected entity",
        )
        p.add_argument("connection")
        if name == "query":
            p.add_argument("sql")
            p.add_argument("-p", "--param", action="append", metavar="NAME[:TYPE]=VALUE")
            p.add_argument("--cache-ttl", type=int, default=0, help="seconds to cache")
            p.add_argument("--max-rows", type=int)
        else:
            p.add_argument("entity")
            p.add_argument("--limit", type=int, default=0)
        p.add_argument("--format", choices=["table", "csv", "json"], default="table")
        p.add_argument("--address", help="gateway address (default FABRIC_LISTEN)")
        p.add_argument(
            "--token", help="bearer token (default FABRIC_TOKEN, or one minted with the local key)"
        )
        p.add_argument(
            "--stage",
            dest="stage_name",
            default=DEFAULT_STAGE,
            help="stage of the minted local token",
        )
        p.add_argument("--timeout", type=float, default=300.0, help="seconds")
        p.set_defaults(func=func)

    token = sub.add_parser("token", help="mint a development token with the local key")
    token.add_argument("--stage", dest="stage_name", default=DEFAULT_STAGE)
    token.add_argument("--role", default="app", choices=["app", "developer", "admin"])
    token.add_argument("--subject", default="developer")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    audit = sub.add_parser("audit", help="administrative changes").add_subparsers(
        dest="action", required=True
    )
    audit_list = audit.add_parser("list", help="list changes, newest first")
    audit_list.add_argument("--connection", help="only changes of this connection")
    audit_list.add_argument("--limit", type=int, default=100)
    sub.choices["audit"].set_defaults(func=cmd_audit)

    demo = sub.add_parser("demo", help="run the embedded demo (no servers needed)")
    demo.add_argument("--scale", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging("debug" if args.verbose else settings.log_level, settings.log_format)
        return int(args.func(args, settings))
    except FabricError as error:
        print(f"error ({error.code}): {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
