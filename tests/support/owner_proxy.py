"""A TCP proxy that lets through only the connections of chosen processes (Linux).

A database behind an `OwnerProxy` is reachable only by the processes `allow`ed: for each
connection it accepts, the proxy finds the process that owns the other end (the client
socket's inode in /proc/net/tcp, then the process holding that inode in /proc/<pid>/fd),
records it, and forwards the connection only when that process is allowed; any other is
closed at once. So a test can show which process reached a database, and that another
one could not have.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path


def _inode_of(client_port: int, server_port: int) -> str | None:
    """The inode of the loopback socket whose local port is `client_port` and whose peer
    is `server_port` (the client's side of a connection to the proxy)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == client_port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port
                ):
                    return inode
    return None


def _holder(inode: str, candidates: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in candidates:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


class OwnerProxy:
    """127.0.0.1:`port` -> 127.0.0.1:`upstream_port`, for the `allow`ed processes only.
    `accepted` and `refused` list the owning pid of every connection (None: the owner is
    none of the `watched` pids). A context manager: closed, with every link, at the end."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.allowed: set[int] = set()
        self.watched: set[int] = set()
        self.accepted: list[int | None] = []
        self.refused: list[int | None] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def allow(self, pid: int) -> None:
        with self._lock:
            self.allowed.add(pid)
            self.watched.add(pid)

    def watch(self, pid: int) -> None:
        """Name `pid` in the records when it connects, without letting it through."""
        with self._lock:
            self.watched.add(pid)

    def __enter__(self) -> OwnerProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=10)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, (_, client_port) = self._listener.accept()
            except OSError:
                return
            inode = _inode_of(client_port, self.port)
            with self._lock:
                owner = None if inode is None else _holder(inode, self.watched)
                allowed = owner is not None and owner in self.allowed
                (self.accepted if allowed else self.refused).append(owner)
            if not allowed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
