"""A TCP proxy in front of a real server, to fault the network between the gateway and it.

`TcpProxy(port)` listens on a free loopback port and forwards every connection to
127.0.0.1:`port`. It runs in a child process (`python -m tests.support.tcp_proxy PORT`,
driven by one-line commands on its stdin), so nothing the test process does (a driver
call that holds the GIL while it waits on the network, say) can stop the network. A
test can then:

- `pause()`: stop forwarding in both directions while keeping every connection open, and
  keep accepting new ones without forwarding them either: to its clients the server looks
  frozen (a SIGSTOPped database answers nothing, but the kernel still accepts). `resume()`
  forwards again, the bytes held back included.
- `cut()`: reset every open connection (RST, as a crashed host or a dropped NAT entry
  would); new connections are still accepted and forwarded.
- `drop_silently()`: forget the server side of every open connection without telling
  the client, which learns it only when it next sends something (then it is reset), as
  after a NAT or firewall forgot an idle connection; new connections work.
- `slow(bytes_per_second)`: forward at most that rate in each direction, per connection;
  `slow(None)` lifts the limit.
- `lag(seconds)`: hold every chunk that long before forwarding it (a long link: each
  round trip takes twice that); `lag(0)` lifts it.

`close()` (or the context manager) resets everything and ends the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 64 * 1024


class TcpProxy:
    """A fault-injecting TCP proxy to 127.0.0.1:`upstream_port` in a child process; see
    the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._child: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> TcpProxy:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tcp_proxy", str(self.upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self._command("port"))
        return self

    def _command(self, line: str) -> str:
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()
        answer = child.stdout.readline()
        if not answer:
            raise RuntimeError("the TCP proxy process has gone")
        return answer.strip()

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        return int(self._command("cut"))

    def drop_silently(self) -> int:
        """See the module docstring; how many connections were dropped."""
        return int(self._command("drop"))

    def slow(self, bytes_per_second: float | None) -> None:
        self._command(f"slow {bytes_per_second or 0}")

    def lag(self, seconds: float) -> None:
        self._command(f"lag {seconds}")

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return int(self._command("accepted"))

    @property
    def open_connections(self) -> int:
        return int(self._command("open"))

    @property
    def forwarded(self) -> int:
        """Bytes forwarded from the server to the clients so far."""
        return int(self._command("forwarded"))

    def forwarded_past(self, count: int) -> bool:
        """Whether more than `count` bytes have gone from the server to the clients."""
        return self.forwarded > count

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            assert child.stdin is not None
            child.stdin.close()  # the child resets every connection and ends
            child.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait(timeout=10)
        finally:
            if child.stdout is not None:
                child.stdout.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Relay:
    """The proxy itself, on an event loop in a daemon thread of the child process."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._rate: float | None = None
        self.lag = 0.0
        self.forwarded = 0
        """Bytes forwarded from the server to the clients so far."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._pairs: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        """Client side -> server side of each open connection."""
        self._dropped: set[asyncio.StreamWriter] = set()
        """Client sides whose server side is gone: reset on their next bytes."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepted = 0
        """Connections accepted so far."""

    # -- control (any thread) ------------------------------------------------------------

    def start(self) -> Relay:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    def pause(self) -> None:
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        return self._call(self._cut())

    def drop_silently(self) -> int:
        """See the module docstring; how many connections were dropped."""
        return self._call(self._drop_silently())

    def slow(self, bytes_per_second: float | None) -> None:
        def set_rate() -> None:
            self._rate = bytes_per_second

        self._loop.call_soon_threadsafe(set_rate)

    @property
    def open_connections(self) -> int:
        return self._call(self._count())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- the loop's side -----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _count(self) -> int:
        return len(self._writers) // 2

    async def _cut(self) -> int:
        writers, self._writers = list(self._writers), set()
        for writer in writers:
            _reset(writer)
        return len(writers) // 2

    async def _drop_silently(self) -> int:
        pairs = list(self._pairs.items())
        for client, upstream in pairs:
            self._dropped.add(client)
            self._writers.discard(upstream)
            _reset(upstream)
        return len(pairs)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(client)
            return
        self._writers.update((client, upstream))
        self._pairs[client] = upstream
        pumps = [
            asyncio.ensure_future(self._pump(client_reader, upstream, client)),
            asyncio.ensure_future(self._pump(upstream_reader, client)),
        ]
        for pump in pumps:
            self._tasks.add(pump)
            pump.add_done_callback(self._tasks.discard)
        # One side ending (or being reset) ends the other.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        if client in self._dropped:
            # The server side went away silently: the client hears nothing until it
            # sends, and then a reset.
            await pumps[0]
            self._dropped.discard(client)
        self._pairs.pop(client, None)
        for pump in pumps:
            pump.cancel()
        for writer in (client, upstream):
            if writer in self._writers:
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        """Forward reader -> writer; `client` is the sending side when it is a client
        (reset on its first bytes once its server side was dropped silently)."""
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()  # paused: nothing is read, so nothing moves
                rate = self._rate
                data = await reader.read(_CHUNK if rate is None else max(1, int(rate // 20)))
                if client is not None and client in self._dropped:
                    self._writers.discard(client)
                    _reset(client)
                    break
                if not data:
                    break
                await self._flowing.wait()  # paused mid-chunk: hold it back
                if self._rate is not None:
                    await asyncio.sleep(len(data) / self._rate)
                if self.lag:
                    await asyncio.sleep(self.lag)
                writer.write(data)
                if client is None:
                    self.forwarded += len(data)
                await writer.drain()
            if writer not in self._dropped and writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER of zero makes the close abort the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def main(argv: list[str]) -> int:
    """The child: a Relay to 127.0.0.1:argv[0], one command per stdin line, one answer
    per stdout line; end of input ends it."""
    relay = Relay(int(argv[0])).start()

    def pause() -> str:
        relay.pause()
        return "ok"

    def resume() -> str:
        relay.resume()
        return "ok"

    commands: dict[str, Callable[[], object]] = {
        "port": lambda: relay.port,
        "pause": pause,
        "resume": resume,
        "cut": relay.cut,
        "drop": relay.drop_silently,
        "accepted": lambda: relay.accepted,
        "forwarded": lambda: relay.forwarded,
        "open": lambda: relay.open_connections,
    }
    try:
        for line in sys.stdin:
            name, _, argument = line.strip().partition(" ")
            if name == "slow":
                rate = float(argument)
                relay.slow(rate if rate > 0 else None)
                answer: object = "ok"
            elif name == "lag":
                relay.lag = float(argument)  # read by the pumps as they go
                answer = "ok"
            else:
                answer = commands[name]()
            sys.stdout.write(f"{answer}\n")
            sys.stdout.flush()
    finally:
        relay.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
