"""Private files for key material: created 0600, replaced atomically, refused when exposed."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from fabric.errors import FailedPrecondition, NotFound

try:  # POSIX advisory locks serialise writers across processes; elsewhere threads only.
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms we ship
    fcntl = None  # type: ignore[assignment]

PRIVATE_MODE = 0o600
"""Owner read/write only: the one mode a key ring or a sealed secret file may have."""

_EXPOSED_BITS = stat.S_IRWXG | stat.S_IRWXO


def check_private(path: Path, what: str) -> None:
    """Refuse a file that is missing, not a regular file, or open to group or others.

    The check runs before the content is read, so a key ring someone made world-readable
    is never used (its keys may already be copied); the message says how to fix it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise FailedPrecondition(f"{what} {path} is not a regular file")
    if os.name == "posix" and st.st_mode & _EXPOSED_BITS:
        mode = stat.S_IMODE(st.st_mode)
        raise FailedPrecondition(
            f"{what} {path} is accessible to group or others (mode {mode:04o}); "
            f"restrict it with `chmod 600 {path}` (and consider its keys exposed: "
            "rotate them) before the gateway will use it"
        )


def read_private(path: Path, what: str) -> bytes:
    """The content of a private file, after `check_private`."""
    check_private(path, what)
    return path.read_bytes()


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a reader sees the old or the new content,
    never a torn file, and the file never exists with a mode wider than 0600."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        try:
            os.fchmod(fd, PRIVATE_MODE)  # the umask can only narrow it; be explicit anyway
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def process_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `<path>.lock` (0600) for a read-modify-write.

    The lock file is separate because the data file is replaced, not rewritten in place.
    """
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
