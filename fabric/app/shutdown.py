"""A bounded stop for `fabric serve`: SIGTERM ends the process in a known time, even when a
driver call is stuck on a source that stopped answering.

The stop itself is bounded step by step (the port closes after the grace period, the
engine's close is not waited for past a limit, driver threads are daemons that the
interpreter does not join at exit), and `ExitWatchdog` is the last word for whatever
else could hang (a blocking call in the event loop's default executor, which asyncio
joins without a limit): if the process is still there `bound` seconds after the stop
began, it logs why and leaves with `os._exit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

EXIT_AFTER_GRACE = 30.0
"""Seconds, beyond twice the grace period (FABRIC_SHUTDOWN_GRACE: a runtime replica's
bus queries, then its gRPC calls), from SIGTERM to the process's exit at the latest."""
FORCED_EXIT_CODE = 1
"""The exit status when the watchdog had to end the process."""


class ExitWatchdog:
    """Ends the process `bound` seconds after `arm` unless it has exited by then."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.bound, self._expire)
        self._timer.name = "fabric-exit-watchdog"
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        log.error(
            "shutdown did not finish within %ss (a source is not answering, %d threads "
            "left); exiting now",
            self.bound,
            len(stuck),
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)
