"""Two socket-level checks a driver does not offer: whether an idle connection is dead,
and cutting off a connection whose server stopped answering."""

from __future__ import annotations

import contextlib
import os
import select
import socket


def idle_connection_is_dead(fd: int) -> bool:
    """Whether the socket of a connection that sits idle (no query in flight) has been
    closed or written to by its server: a server that ends a session (a restart, an
    operator's terminate, an idle timeout) says goodbye and closes it, so anything to
    read, or an error, means the connection must not be used. A poll, no round trip."""
    if fd < 0:
        return True
    poller = select.poll()
    try:
        poller.register(fd, select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
    except (OSError, ValueError):
        return True
    return bool(events)


def sever(fd: int) -> bool:
    """Shut a connected socket down in both directions, under the driver that owns it:
    a thread blocked reading or writing it returns with an error at once, and the
    driver then sees a broken connection (to discard, never to reuse). The descriptor
    stays the driver's to close. False when there was no socket to shut."""
    if fd < 0:
        return False
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        with socket.socket(fileno=duplicate) as sock, contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        os.close(duplicate)
        return False
    return True
