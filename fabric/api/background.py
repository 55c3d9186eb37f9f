"""A gateway on its own event loop in a background thread, for the demo, tests and
benchmarks that talk to it through the real gRPC client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from fabric.api.server import Gateway


class BackgroundGateway:
    def __init__(
        self,
        gateway: Gateway,
        address: str = "127.0.0.1:0",
        *,
        metrics: bool = False,
        flight_address: str = "",
        http_address: str = "",
    ) -> None:
        self.gateway = gateway
        self._address = address
        self._flight_address = flight_address
        self._http_address = http_address
        self._metrics = metrics
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fabric-gateway", daemon=True
        )
        self.port = 0

    @property
    def address(self) -> str:
        """Where clients reach it: the unix socket it was given, else 127.0.0.1:port."""
        if self._address.startswith("unix:"):
            return self._address
        return f"127.0.0.1:{self.port}"

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> BackgroundGateway:
        self._thread.start()
        self.port = self.call(
            self.gateway.start(
                self._address,
                metrics=self._metrics,
                flight_address=self._flight_address,
                http_address=self._http_address,
            )
        )
        return self

    @property
    def flight_uri(self) -> str:
        """The Flight SQL endpoint (plaintext; the port `flight_address` chose)."""
        return f"grpc://127.0.0.1:{self.gateway.flight_port}"

    @property
    def http_url(self) -> str:
        """The REST API and portal's base URL (the port `http_address` chose)."""
        scheme = "https" if self.gateway.settings.tls else "http"
        return f"{scheme}://127.0.0.1:{self.gateway.http_port}"

    def wait(self) -> None:
        """Block until the gateway's server ends, or the caller is interrupted (Ctrl-C)."""
        # Not cancelled when interrupted: it ends with the server, which `stop` stops.
        ended = asyncio.run_coroutine_threadsafe(self.gateway.wait(), self._loop)
        while not ended.done():
            # Back in Python every second: a signal the kernel delivered to another thread
            # only runs its handler (KeyboardInterrupt) once this one does.
            concurrent.futures.wait([ended], timeout=1.0)

    def stop(self, grace: float = 1.0) -> None:
        try:
            self.call(self.gateway.stop(grace))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    def __enter__(self) -> BackgroundGateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
