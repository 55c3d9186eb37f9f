"""The HTTP(S) server: uvicorn driven from the gateway's event loop, its `serve()` a task
next to the grpc.aio server, stopped within the gateway's shutdown grace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from fabric.config import Settings
from fabric.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

STARTUP_WAIT = 30.0


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling: the gateway's process owns SIGTERM
    and SIGINT (uvicorn would replace the handlers `fabric serve` installed), and tells
    this server to stop through `HttpServer.stop`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def _listen_socket(address: str) -> socket.socket:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"FABRIC_HTTP_LISTEN must be host:port, not {address!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise FailedPrecondition(
            f"cannot listen on {address} for HTTP: {error.strerror or type(error).__name__}"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise FailedPrecondition(
            f"cannot listen on {address} for HTTP: {error.strerror or type(error).__name__}; "
            "stop what uses it or choose another address with FABRIC_HTTP_LISTEN"
        ) from None
    return sock


class HttpServer:
    """One ASGI app served on one address, with the gateway's TLS settings (mutual TLS
    too when a client CA is configured)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def tls(self) -> bool:
        return self._settings.tls

    async def start(self, address: str) -> int:
        settings = self._settings
        config = uvicorn.Config(
            self._app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            # Paths are logged by the gateway's own rules, not per request here.
            access_log=False,
            server_header=False,
            proxy_headers=False,
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            ssl_ca_certs=settings.tls_client_ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as error:
            raise InvalidArgument(
                f"cannot load the TLS certificate or key for HTTP ({type(error).__name__})"
            ) from None
        sock = _listen_socket(address)
        self.port = int(sock.getsockname()[1])
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="fabric-http")
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._task}, timeout=STARTUP_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            await self.stop(0)
            raise FailedPrecondition(f"the HTTP server on {address} did not start")
        log.info("HTTP%s listening on port %s", "S" if self.tls else "", self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop taking connections; let requests in flight finish within `grace` seconds,
        then cancel them."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace)
        except TimeoutError:
            # Past the grace: the requests still running are cancelled, the server ends.
            server.force_exit = True
            for request in list(server.server_state.tasks):
                request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._server = self._task = None
