"""The connectors' deadline watcher: one thread for every query's deadline,
woken only when a new deadline comes before its next wake-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from connectors.blocking import DeadlineWatcher


def test_an_early_deadline_added_after_late_ones_fires_on_time() -> None:
    watcher = DeadlineWatcher()
    fired: list[str] = []
    late_fired = threading.Event()
    early_fired = threading.Event()

    def fire(name: str, event: threading.Event) -> Callable[[], None]:
        def record() -> None:
            fired.append(name)
            event.set()

        return record

    late = watcher.add(60.0, fire("late", late_fired))
    watcher.add(30.0, lambda: fired.append("later still"))
    started = time.monotonic()
    watcher.add(0.05, fire("early", early_fired))
    assert early_fired.wait(timeout=5)
    assert time.monotonic() - started >= 0.05
    assert fired == ["early"]
    watcher.remove(late)
    assert not late_fired.is_set()


def test_later_deadlines_do_not_wake_the_thread_and_removed_ones_never_fire() -> None:
    watcher = DeadlineWatcher()
    first = watcher.add(120.0, lambda: None)
    wake_at = watcher._wake_at
    assert wake_at <= time.monotonic() + 120.0
    for _ in range(50):  # like queries with the same timeout, started later
        watcher.remove(watcher.add(120.0, lambda: None))
    assert watcher._wake_at == wake_at  # no wake-up was asked for
    fired = threading.Event()
    removed = watcher.add(0.01, fired.set)
    watcher.remove(removed)
    done = threading.Event()
    watcher.add(0.05, done.set)
    assert done.wait(timeout=5)
    assert not fired.is_set()
    watcher.remove(first)
