"""The `fabric` command: serve, manage connections and the catalog, query, preview, portal, demo.

Exit status: 0 on success, 2 on any error (a usage error, or an error the gateway or a
source reported; the message says which and what to do), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors import registry
from fabric import __version__
from fabric.app.process_role import ProcessRole
from fabric.config import Settings, describe_settings, resolve_settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import (
    FabricError,
    GatewayUnavailable,
    PermissionDenied,
    SourceQueryError,
    Unauthenticated,
)
from fabric.model import ALL_STAGES
from fabric.observability.logging import configure as configure_logging
from fabric.terminal.arguments import (
    PARAM_TYPES,
    UsageError,
    non_negative_int,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from fabric.client import FabricClient

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

    if args.check:
        return cmd_serve_check(args, settings)

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
        if sys.stderr.isatty():
            print(
                "running until Ctrl-C: run the other fabric commands in another terminal",
                file=sys.stderr,
                flush=True,
            )
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
    except OSError as error:  # a socket refused, a file unreadable
        raise FabricError(
            f"cannot start the {args.role} process: {error.strerror or type(error).__name__}"
        ) from None
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    """--token, else FABRIC_TOKEN, else (FABRIC_AUTH=local) a short-lived token minted with
    the local key, whose file only the gateway's owner can read."""
    token = args.token or os.environ.get("FABRIC_TOKEN")
    if token:
        return str(token)
    if settings.auth == "local" and settings.token_key_path.exists():
        from fabric.app.parts import local_token
        from fabric.terminal.local import local_actor

        return local_token(
            settings,
            tenant=args.tenant,
            stage=getattr(args, "stage_name", None) or DEFAULT_STAGE,
            subject=local_actor(),
            ttl=300,
        )
    return None


def _read_pem(path: str, option: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read the {option} file {path!r}: {error.strerror}") from None


def _tls_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The client's TLS from --tls-ca/--tls-cert/--tls-key/--tls (else FABRIC_TLS_CA,
    FABRIC_TLS_CLIENT_CERT, FABRIC_TLS_CLIENT_KEY)."""
    ca = args.tls_ca or settings.tls_ca
    cert = args.tls_cert or settings.tls_client_cert
    key = args.tls_key or settings.tls_client_key
    if bool(cert) != bool(key):
        raise UsageError("mutual TLS needs both --tls-cert and --tls-key")
    return {
        "tls": bool(args.tls or ca or cert),
        "tls_ca": _read_pem(ca, "--tls-ca") if ca else None,
        "tls_cert": _read_pem(cert, "--tls-cert") if cert else None,
        "tls_key": _read_pem(key, "--tls-key") if key else None,
        "tls_server_name": args.tls_server_name,
    }


def _client(args: argparse.Namespace, settings: Settings) -> FabricClient:
    from fabric.client import FabricClient

    return FabricClient(
        args.address or settings.listen,
        _token(args, settings),
        timeout=args.timeout,
        **_tls_options(args, settings),
    )


@contextlib.contextmanager
def _admin_client(args: argparse.Namespace, settings: Settings) -> Iterator[FabricClient]:
    """The gateway's client, or with --local a private gateway's over FABRIC_HOME."""
    if args.local:
        from fabric.terminal.local import local_client

        with local_client(
            settings, args.tenant, getattr(args, "stage_name", None) or DEFAULT_STAGE
        ) as client:
            yield client
    else:
        with _client(args, settings) as client:
            yield client


def cmd_connection(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.admin import run_connection

    with _admin_client(args, settings) as client:
        run_connection(args, client)
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.admin import run_catalog

    with _admin_client(args, settings) as client:
        run_catalog(args, client)
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.admin import run_audit

    with _admin_client(args, settings) as client:
        run_audit(args, client)
    return 0


def cmd_queries(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.admin import run_queries

    with _client(args, settings) as client:
        run_queries(args, client)
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.query import run_query

    with _client(args, settings) as client:
        run_query(args, client)
    return 0


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.query import run_preview

    with _client(args, settings) as client:
        run_preview(args, client)
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.terminal.shell import run_shell

    with _client(args, settings) as client:
        run_shell(args, client, settings)
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


def cmd_portal(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.app.portal import sign_in_link

    link = sign_in_link(
        settings,
        tenant=args.tenant,
        stage=args.stage_name,
        role=args.role,
        subject=args.subject,
        host=args.host,
    )
    print(f"open this link within 2 minutes to sign in to the portal (it works once):\n{link}")
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """`fabric health`: the gRPC health status of a process (for container health checks
    and operators); 0 when SERVING, 1 otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = args.address or settings.health_listen or settings.listen
    if args.tls_ca:
        with open(args.tls_ca, "rb") as ca:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read()))
    else:
        channel = grpc.insecure_channel(address)
    serving = health_pb2.HealthCheckResponse.SERVING
    request = health_pb2.HealthCheckRequest(service=args.service)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status_code: int | None = None
        try:
            if args.wait:
                # Watch streams every change of status, so waiting for SERVING needs no
                # polling; wait_for_ready also waits for a process that is not listening yet.
                for reply in stub.Watch(request, timeout=args.wait, wait_for_ready=True):
                    status_code = reply.status
                    if status_code == serving:
                        break
            else:
                status_code = stub.Check(request, timeout=args.timeout).status
        except grpc.RpcError as error:
            if status_code is None:  # no answer at all (a time-out after one keeps it)
                print(f"{address}: no health answer ({error.code().name.lower()})", file=sys.stderr)
                return 1
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status_code)}")
    return 0 if status_code == serving else 1


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    print(describe_settings(resolve_settings(config_file=args.config)), end="")
    return 0


def cmd_serve_check(args: argparse.Namespace, settings: Settings) -> int:
    """`fabric serve --check`: print one line per check; 0 when all pass, 1 otherwise."""
    from fabric.app.check import run_checks

    results = run_checks(settings, ProcessRole(args.role), args.listen, insecure=args.insecure)
    width = max(len(r.name) for r in results)
    for result in results:
        status = "ok  " if result.ok else "FAIL"
        print(f"{status} {result.name.ljust(width)}  {result.detail}")
    failed = [r.name for r in results if not r.ok]
    print("ready to serve" if not failed else f"not ready: {', '.join(failed)}")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.demo import run_demo

    run_demo(settings, scale=args.scale, serve=args.serve)
    return 0


# -- the parser -------------------------------------------------------------------------


def _add_password_sources(
    parser: argparse.ArgumentParser, password: str
) -> argparse._MutuallyExclusiveGroup:
    """--password-stdin and --password-prompt, one or the other; the group, for a command
    that has another way to say what becomes of it."""
    sources = parser.add_mutually_exclusive_group()
    sources.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"read {password} from the first line of standard input",
    )
    sources.add_argument(
        "--password-prompt",
        action="store_true",
        help=f"ask for {password} on the terminal, without echoing it",
    )
    return sources


def _add_gateway_options(parser: argparse.ArgumentParser, *, local: bool = False) -> None:
    """How a command reaches the gateway: address, token, TLS, timeout (and --local)."""
    group = parser.add_argument_group("reaching the gateway")
    group.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="gateway address (default: FABRIC_LISTEN, else 127.0.0.1:50051); a stage's "
        "replicas as several, comma-separated, or as one name resolving to several "
        "(dns:///name:port): calls go round-robin, and one a replica could not take "
        "before its first byte is tried on the next",
    )
    group.add_argument(
        "--token",
        help="bearer token (default: FABRIC_TOKEN, else a 5-minute admin token minted "
        "with the local key when FABRIC_AUTH=local)",
    )
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA bundle the gateway's certificate must chain to; turns TLS on "
        "(default: FABRIC_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate for mutual TLS (default: FABRIC_TLS_CLIENT_CERT)",
    )
    group.add_argument(
        "--tls-key",
        metavar="FILE",
        help="PEM private key of --tls-cert (default: FABRIC_TLS_CLIENT_KEY)",
    )
    group.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's root certificates"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the gateway's certificate carries, when the address does not "
        "(an IP address, a tunnel)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="longest time a call may take (default 300)",
    )
    if local:
        group.add_argument(
            "--local",
            action="store_true",
            help="work directly on FABRIC_HOME's stores (or FABRIC_METADATA_URL's), "
            "without a gateway",
        )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=["table", "vertical", "csv", "json", "jsonl"],
        default="table",
        help="table: aligned columns; vertical: one 'column | value' line per field "
        "(wide rows); csv: RFC 4180 with a header; json: one JSON array of row objects; "
        "jsonl: one JSON object per line (default: table)",
    )
    parser.add_argument(
        "--terminal-rows",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="on a terminal, print at most N rows and say when more were left out "
        "(default 1000; 0: all); output to a pipe or file is never cut",
    )
    parser.add_argument(
        "--no-pager",
        action="store_true",
        help="never page results taller than the screen (default: page with $PAGER, "
        "else less, on a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabric",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fabric {__version__}")
    parser.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help="tenant of minted local tokens and of --local administration "
        f"(default {DEFAULT_TENANT!r})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (default: FABRIC_CONFIG, else none); the "
        "environment's FABRIC_* variables override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway (until Ctrl-C or SIGTERM)",
        description="Run the gateway. It keeps running in the foreground until Ctrl-C or "
        "SIGTERM: run the other commands in another terminal, or start it in the "
        "background (fabric serve &).",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default FABRIC_LISTEN or 127.0.0.1:50051)",
    )
    serve.add_argument(
        "--role",
        default="all",
        choices=[role.value for role in ProcessRole],
        help="all: both planes in one process (default); platform: the control plane "
        "(connections, catalog, audit), with developers' previews and the source work "
        "(tests, discovery, refresh) sent over NATS to the stage's replicas; "
        "runtime: one replica of --stage, serving that stage's apps on --listen",
    )
    serve.add_argument(
        "--stage",
        dest="stage_name",
        metavar="STAGE",
        help="the stage a runtime replica serves (--role runtime)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without TLS (not for production)",
    )
    serve.add_argument(
        "--check",
        action="store_true",
        help="check the configuration and that the metadata store, secret store, key "
        "management and NATS are reachable, then exit (0: ready)",
    )
    serve.set_defaults(func=cmd_serve)

    health = sub.add_parser("health", help="ask a process for its gRPC health status")
    health.add_argument(
        "--address",
        help="host:port of its health service (default FABRIC_HEALTH_LISTEN, else FABRIC_LISTEN)",
    )
    health.add_argument(
        "--service", default="", help="service name to ask about (default: the whole process)"
    )
    health.add_argument("--tls-ca", help="PEM CA bundle, when the address serves TLS")
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds an answer may take (without --wait)"
    )
    health.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for the process to start and say SERVING",
    )
    health.set_defaults(func=cmd_health)

    config = sub.add_parser("config", help="show the settings").add_subparsers(
        dest="action", required=True
    )
    config.add_parser(
        "show",
        help="every setting, its value (secrets redacted), help and origin, as TOML",
    ).set_defaults(func=cmd_config_show)

    _add_connection_parser(sub)
    _add_catalog_parser(sub)
    _add_query_parsers(sub)

    token = sub.add_parser(
        "token",
        help="mint a development token with the local key (FABRIC_AUTH=local)",
    )
    token.add_argument(
        "--stage",
        dest="stage_name",
        default=DEFAULT_STAGE,
        metavar="STAGE",
        help=f"the stage the token reaches (default {DEFAULT_STAGE!r})",
    )
    token.add_argument(
        "--role",
        default="app",
        choices=["app", "developer", "admin"],
        help="app: query; developer: also preview, discover and select; admin: also manage "
        "connections (default app)",
    )
    token.add_argument(
        "--subject",
        default="developer",
        help="who the token says the caller is; the audit records it (default 'developer')",
    )
    token.add_argument(
        "--ttl",
        type=positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime in seconds (default 3600, at most FABRIC_JWT_MAX_LIFETIME)",
    )
    token.set_defaults(func=cmd_token)

    portal = sub.add_parser(
        "portal",
        help="print a one-time sign-in link for the portal (FABRIC_AUTH=local, FABRIC_HTTP_LISTEN)",
    )
    portal.add_argument(
        "--stage",
        dest="stage_name",
        default=DEFAULT_STAGE,
        metavar="STAGE",
        help=f"the stage the session reaches (default {DEFAULT_STAGE!r})",
    )
    portal.add_argument(
        "--role",
        default="admin",
        choices=["developer", "admin"],
        help="developer: discover, select, preview, query; admin: also manage connections "
        "(default admin; apps do not sign in)",
    )
    portal.add_argument(
        "--subject",
        default="developer",
        help="who the session says the caller is; the audit records it (default 'developer')",
    )
    portal.add_argument(
        "--host", help="the host name in the link (default: FABRIC_HTTP_LISTEN's, or localhost)"
    )
    portal.set_defaults(func=cmd_portal)

    audit = sub.add_parser("audit", help="administrative changes")
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_list = audit_sub.add_parser("list", help="list changes, newest first")
    audit_list.add_argument("--connection", help="only changes of this connection")
    audit_list.add_argument(
        "--limit",
        type=positive_int,
        default=100,
        metavar="N",
        help="at most N changes (default 100, at most 10000)",
    )
    _add_gateway_options(audit_list, local=True)
    audit.set_defaults(func=cmd_audit)

    queries = sub.add_parser(
        "queries", help="queries running now across a stage's replicas (admin tokens)"
    )
    queries_sub = queries.add_subparsers(dest="action", required=True, metavar="ACTION")
    queries_list = queries_sub.add_parser("list", help="list running queries, oldest first")
    queries_cancel = queries_sub.add_parser(
        "cancel", help="cancel a running query; it is stopped at its source"
    )
    queries_cancel.add_argument("id", help="the query's id, from `fabric queries list`")
    for action in (queries_list, queries_cancel):
        action.add_argument(
            "--stage", default="", help="the stage (default: the stage of the token)"
        )
        _add_gateway_options(action)
    queries.set_defaults(func=cmd_queries)

    demo = sub.add_parser("demo", help="run the embedded demo (no servers needed)")
    demo.add_argument(
        "--scale",
        type=positive_int,
        default=1,
        help="size of the generated retail data (default 1)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep the gateway and its portal (REST API) running after the demo, until Ctrl-C",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_connection_parser(sub: Any) -> None:
    conn_parser = sub.add_parser(
        "connection",
        help="manage connections (through the gateway; --local: on FABRIC_HOME)",
    )
    conn_parser.set_defaults(func=cmd_connection)
    conn = conn_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = conn.add_parser(
        "create",
        help="register a connection (tested first unless --no-verify)",
        epilog="settings by kind:\n" + "\n".join(s.describe() for s in registry.specs()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name", help="the connection's name, as queries will use it")
    create.add_argument("--kind", required=True, choices=registry.kinds(), help="the source")
    create.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a setting of the kind (see below); repeat",
    )
    create.add_argument(
        "--stage",
        default=ALL_STAGES,
        help="stage these settings are for (default: all stages)",
    )
    create.add_argument(
        "--no-verify",
        action="store_true",
        help="store the connection without connecting to the source first",
    )
    _add_password_sources(create, "the password")
    _add_gateway_options(create, local=True)

    listing = conn.add_parser("list", help="list connections")
    _add_gateway_options(listing, local=True)
    show = conn.add_parser("show", help="a connection's stages and settings (never a password)")
    show.add_argument("name", help="the connection")
    _add_gateway_options(show, local=True)
    delete = conn.add_parser("delete", help="delete a connection, its selection and secrets")
    delete.add_argument("name", help="the connection")
    _add_gateway_options(delete, local=True)
    test = conn.add_parser("test", help="connect and run a trivial query")
    test.add_argument("name", help="the connection")
    test.add_argument(
        "--stage",
        dest="stage_name",
        default=DEFAULT_STAGE,
        metavar="STAGE",
        help=f"the stage whose settings are tested (default {DEFAULT_STAGE!r})",
    )
    _add_gateway_options(test, local=True)

    update = conn.add_parser("update", help="change a stage's settings or password")
    update.add_argument("name", help="the connection")
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
        "--expected-version",
        type=non_negative_int,
        metavar="N",
        help="apply only if the connection is still at version N",
    )
    update.add_argument(
        "--verify", action="store_true", help="test the changed stage before storing anything"
    )
    _add_gateway_options(update, local=True)


def _add_catalog_parser(sub: Any) -> None:
    cat = sub.add_parser(
        "catalog",
        help="discover and select what apps may query (through the gateway; --local: on "
        "FABRIC_HOME)",
    )
    cat.set_defaults(func=cmd_catalog)
    cat_sub = cat.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("discover", "list remote tables, columns and keys"),
        ("select", "select a table (some columns, or all) for apps"),
        ("unselect", "remove entities from the selection"),
        ("list", "list selected entities"),
        ("refresh", "re-read the selected tables and report drift"),
    ):
        p = cat_sub.add_parser(name, help=text)
        p.add_argument("connection", help="the connection")
        p.add_argument(
            "--stage",
            dest="stage_name",
            default=None,
            metavar="STAGE",
            help=f"the stage whose source is read (default: the token's, {DEFAULT_STAGE!r})",
        )
        if name in ("discover", "select"):
            p.add_argument("--schema", action="append", help="only tables of this schema; repeat")
        if name == "select":
            p.add_argument("table", nargs="?", help="schema.table, or a table name")
            p.add_argument(
                "--columns",
                metavar="A,B,...",
                help="comma-separated columns (default: all; the primary key always comes)",
            )
            p.add_argument("--as", dest="entity_name", help="the entity name apps will use")
            p.add_argument("--all", action="store_true", help="select every table")
        if name == "unselect":
            p.add_argument("entities", nargs="+", help="entity names")
        _add_gateway_options(p, local=True)


def _add_query_parsers(sub: Any) -> None:
    query = sub.add_parser(
        "query",
        help="run a query through the gateway",
        description="Run one SELECT through the gateway and print its rows as they arrive.",
    )
    query.add_argument(
        "connection",
        help="the connection of unqualified entity names ('' when every entity is written "
        "connection.entity)",
    )
    query.add_argument(
        "--explain",
        nargs="?",
        const="plan",
        choices=("plan", "analyze"),
        help="print the plan instead of the rows: each source's statement and DuckDB's "
        "part; 'analyze' runs the query and adds the rows and bytes each part moved",
    )
    query.add_argument(
        "sql",
        nargs="?",
        help="the SQL; '-' reads it from standard input (or use -f FILE)",
    )
    query.add_argument(
        "-f", "--file", metavar="FILE", help="read the SQL from FILE ('-': standard input)"
    )
    query.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="NAME[:TYPE]=VALUE",
        help="a parameter (:NAME in the SQL); repeat. NAME=VALUE infers the type only when "
        "nothing typed is lost (5, -2, 2.5, true, false, null; 007 or +5 stay text); "
        f"NAME:TYPE=VALUE sets it, TYPE one of {' '.join(PARAM_TYPES)}",
    )
    query.add_argument(
        "--cache-ttl",
        type=non_negative_int,
        default=0,
        metavar="SECONDS",
        help="keep the result in the gateway's cache this long (default 0: no caching)",
    )
    query.add_argument(
        "--max-rows",
        type=positive_int,
        metavar="N",
        help="at most N rows; the result says when it was cut (default and cap: the "
        "gateway's FABRIC_MAX_ROWS)",
    )
    query.add_argument(
        "--max-bytes",
        type=positive_int,
        metavar="N",
        help="at most N bytes of result data; the result says when it was cut (default "
        "and cap: the gateway's FABRIC_MAX_RESULT_BYTES)",
    )
    _add_query_common(query)
    query.set_defaults(func=cmd_query)

    preview = sub.add_parser(
        "preview", help="show the first rows of a selected entity (developer role)"
    )
    preview.add_argument("connection", help="the connection")
    preview.add_argument("entity", help="the entity")
    preview.add_argument(
        "--limit",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="rows to show (default 0: the gateway's FABRIC_PREVIEW_ROWS)",
    )
    _add_query_common(preview)
    preview.set_defaults(func=cmd_preview)

    shell = sub.add_parser(
        "sql",
        help="an interactive SQL shell on a connection",
        description="An interactive shell: statements end with ';' (or a blank line); "
        "history, completion of entity and column names, timing. \\help lists commands.",
    )
    shell.add_argument("connection", help="the connection")
    shell.add_argument(
        "--history",
        metavar="FILE",
        help="history file (default FABRIC_HOME/sql_history; '' for none)",
    )
    _add_query_common(shell)
    shell.set_defaults(func=cmd_sql)


def _add_query_common(parser: argparse.ArgumentParser) -> None:
    _add_output_options(parser)
    parser.add_argument(
        "--stage",
        dest="stage_name",
        default=DEFAULT_STAGE,
        metavar="STAGE",
        help=f"stage of the minted local token (default {DEFAULT_STAGE!r})",
    )
    _add_gateway_options(parser)


# -- errors as messages -----------------------------------------------------------------


def _hint(error: FabricError, args: argparse.Namespace, settings: Settings) -> str:
    """What to do next, for the mistakes people make most."""
    if isinstance(error, GatewayUnavailable):
        address = getattr(args, "address", None) or settings.listen
        local = (
            " or pass --local to work on FABRIC_HOME without a gateway,"
            if hasattr(args, "local")
            else ""
        )
        return (
            f"\nIs the gateway running at {address}? Start it with `fabric serve` (it "
            "keeps its terminal: use another one, or `fabric serve &`),"
            f"{local} or point --address (FABRIC_LISTEN) at a running one. If it uses "
            "TLS, pass --tls-ca (FABRIC_TLS_CA)."
        )
    from_env = not getattr(args, "token", None) and os.environ.get("FABRIC_TOKEN")
    if isinstance(error, PermissionDenied | Unauthenticated) and from_env:
        return (
            "\nThe token came from FABRIC_TOKEN: use one with the role needed "
            "(`fabric token --role developer` or `--role admin`), or unset FABRIC_TOKEN "
            "to let the CLI mint a local admin token."
        )
    if (
        isinstance(error, SourceQueryError)
        and error.sqlstate in _TYPE_MISMATCH_SQLSTATES
        and getattr(args, "param", None)
    ):
        from fabric.terminal.arguments import inferred_names

        names = inferred_names(args.param)
        if names:
            return (
                f"\nParameter(s) {', '.join(names)} had their type inferred from the text; "
                "if a type does not fit the column, give it: -p NAME:TYPE=VALUE "
                f"(TYPE one of {' '.join(PARAM_TYPES)})."
            )
    return ""


_TYPE_MISMATCH_SQLSTATES = frozenset(
    {
        "42883",  # undefined_function: no operator for these types
        "42804",  # datatype_mismatch
        "22P02",  # invalid_text_representation
        "22007",  # invalid_datetime_format
        "22008",  # datetime_field_overflow
        "22003",  # numeric_value_out_of_range
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = Settings.from_env(config_file=args.config)
        configure_logging("debug" if args.verbose else settings.log_level, settings.log_format)
        return int(args.func(args, settings))
    except FabricError as error:
        hint = _hint(error, args, settings) if settings is not None else ""
        print(f"error ({error.code}): {error.message}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, a pager) left: what it wanted is written. Python would
        # complain again when flushing stdout at exit; point it at nothing.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if args.verbose:
            raise
        print(
            f"error: unexpected {type(error).__name__} in the fabric command; run it again "
            "with --verbose for the details",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
