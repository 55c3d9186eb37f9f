"""Where a gateway's federated queries spill: one directory per process under the
federation temp root, owned through an advisory lock held for the process's life.

Several gateways may share one FABRIC_HOME (the replicas of a stage on one machine do),
so a gateway starting up must not wipe what the others are spilling right now, only what
a process that is gone left behind (a crash included). The kernel releases a dead
process's locks, so an area whose lock can be taken belongs to nobody and is wiped."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

OWNER_FILE = ".owner"
"""The lock file in each process's area; its lock is held while the process lives."""


class SpillArea:
    """This process's spill directory (`path`); queries spill in directories below it."""

    def __init__(self, path: Path, owner_fd: int) -> None:
        self.path = path
        self._owner_fd: int | None = owner_fd

    @classmethod
    def claim(cls, root: Path) -> SpillArea:
        """Take an area of one's own under `root`, then wipe the areas (and any other
        files) no living process owns."""
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = root / uuid.uuid4().hex
        path.mkdir(mode=0o700)
        fd = os.open(path / OWNER_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        area = cls(path, fd)
        area._wipe_abandoned(root)
        return area

    def _wipe_abandoned(self, root: Path) -> None:
        for entry in root.iterdir():
            if entry == self.path:
                continue
            if entry.is_dir() and not entry.is_symlink():
                if _owned_by_a_live_process(entry):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def query_dir(self) -> Path:
        """A new directory name for one query's spill files (created by its run)."""
        return self.path / uuid.uuid4().hex

    def release(self) -> None:
        """Remove the area and give up its lock (the gateway is closing)."""
        if self._owner_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._owner_fd)
        self._owner_fd = None


def _owned_by_a_live_process(area: Path) -> bool:
    """True while another process holds the area's lock."""
    try:
        fd = os.open(area / OWNER_FILE, os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody owns it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also gives back the lock just taken
    return False
