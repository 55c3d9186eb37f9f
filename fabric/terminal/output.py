"""A result on its way to a terminal, a pipe or a file: streamed as it arrives, with a
progress line and a pager on a terminal, and a row cap that says what it cut.

- Progress: while a query runs, stderr shows elapsed time and rows received, when
  stderr is a terminal; nothing when it is not. It goes away before rows are printed
  to the same terminal (the summary line then says it all).
- Pager: output taller than the terminal goes through $PAGER (else `less -RS`), once
  it is known to be taller; quitting the pager stops the query.
- Row cap: a terminal shows at most `terminal_rows` rows (the query asks the gateway
  for one more, to know there are more); the summary says rows were left out. Output
  to a pipe or a file is never cut.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Protocol, TextIO

import pyarrow as pa

from fabric.client import ResultSummary
from fabric.console import DEFAULT_MAX_WIDTH, open_writer

__all__ = [
    "Display",
    "Outcome",
    "Progress",
    "ResultSource",
    "TableSource",
    "TerminalOutput",
    "print_stream",
]

DEFAULT_TERMINAL_ROWS = 1000
_PROGRESS_DELAY = 0.3
"""Seconds before the progress line first shows (a quick query shows none)."""
_PROGRESS_EVERY = 0.2


@dataclass(frozen=True, slots=True)
class Display:
    """Where and how a result is printed."""

    fmt: str = "table"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    terminal_rows: int | None = None
    """Rows a terminal shows at most (None: DEFAULT_TERMINAL_ROWS; 0: all)."""
    pager: bool = True

    @property
    def on_terminal(self) -> bool:
        return _isatty(self.out)

    @property
    def progress_shown(self) -> bool:
        return _isatty(self.err)

    @property
    def row_cap(self) -> int | None:
        """The rows to show at most, or None for all."""
        if not self.on_terminal:
            return None
        cap = DEFAULT_TERMINAL_ROWS if self.terminal_rows is None else self.terminal_rows
        return cap or None

    def request_rows(self, max_rows: int | None) -> int | None:
        """The max_rows to ask the gateway for: one past the cap, to learn there is more."""
        cap = self.row_cap
        if cap is None:
            return max_rows
        return cap + 1 if max_rows is None else min(max_rows, cap + 1)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """The progress line on stderr: elapsed time and rows received, refreshed from a
    thread of its own while the caller blocks on the network."""

    def __init__(self, err: TextIO, *, shown: bool, clock: Callable[[], float] = time.monotonic):
        self._err = err
        self._shown = shown
        self._clock = clock
        self.started = clock()
        self.rows = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._drawn = False
        self._thread: threading.Thread | None = None

    def start(self) -> Progress:
        if self._shown:
            self._thread = threading.Thread(target=self._run, name="fabric-progress", daemon=True)
            self._thread.start()
        return self

    def elapsed(self) -> float:
        return self._clock() - self.started

    def _run(self) -> None:
        if self._stop.wait(_PROGRESS_DELAY):
            return
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self._err.write(
                    f"\r\x1b[K-- running: {self.rows:,} rows received, {self.elapsed():.1f} s"
                )
                self._err.flush()
                self._drawn = True
            if self._stop.wait(_PROGRESS_EVERY):
                return

    def stop(self) -> None:
        """Stop refreshing and clear the line (idempotent)."""
        with self._lock:
            self._stop.set()
            if self._drawn:
                self._err.write("\r\x1b[K")
                self._err.flush()
                self._drawn = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None


class TerminalOutput:
    """A text sink for a result: what it writes goes to `display.out`, through a pager
    once it is taller than the terminal. `before_first_write` runs once, before the
    first character reaches the terminal (the progress line goes away then)."""

    def __init__(self, display: Display, before_first_write: Callable[[], None]) -> None:
        self._display = display
        self._before: Callable[[], None] | None = before_first_write
        self._paging = display.pager and display.on_terminal and _pager_command() is not None
        size = shutil.get_terminal_size()
        self._height = max(size.lines - 2, 1)
        self._held: list[str] = []
        self._held_lines = 0
        self._pager: subprocess.Popen[str] | None = None
        self._target: IO[str] | None = None if self._paging else display.out

    def write(self, text: str) -> int:
        if self._target is None:
            self._held.append(text)
            self._held_lines += text.count("\n")
            if self._held_lines > self._height:
                self._start_pager()
            return len(text)
        self._first()
        self._target.write(text)
        return len(text)

    def _first(self) -> None:
        if self._before is not None:
            before, self._before = self._before, None
            before()

    def _start_pager(self) -> None:
        command = _pager_command()
        assert command is not None
        self._first()
        env = {**os.environ, "LESS": os.environ.get("LESS", "") or "RS"}
        self._pager = subprocess.Popen(
            command, shell=True, stdin=subprocess.PIPE, text=True, encoding="utf-8", env=env
        )
        stdin = self._pager.stdin
        assert stdin is not None
        self._target = stdin
        held, self._held = "".join(self._held), []
        stdin.write(held)

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()

    def close(self) -> None:
        """Everything written reaches the terminal; a pager is waited for."""
        if self._target is None:
            self._target = self._display.out
            if self._held:
                self._first()
                self._target.write("".join(self._held))
                self._held = []
        if self._pager is not None:
            if self._pager.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    self._pager.stdin.close()
            self._pager.wait()
        else:
            self._target.flush()


def _pager_command() -> str | None:
    pager = os.environ.get("PAGER")
    if pager is not None:
        return pager.strip() or None  # PAGER= turns paging off
    less = shutil.which("less")
    return shlex.quote(less) if less else None


class ResultSource(AbstractContextManager["ResultSource"], Protocol):
    """What `print_stream` reads (a `fabric.client.ResultStream`, or a `TableSource`);
    leaving the context before the end stops the query."""

    @property
    def schema(self) -> pa.Schema: ...

    @property
    def summary(self) -> ResultSummary | None: ...

    def __iter__(self) -> Iterator[pa.RecordBatch]: ...


class TableSource:
    """A table already received, read like a stream (a preview is one small answer)."""

    summary = None

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    @property
    def schema(self) -> pa.Schema:
        return self._table.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches()

    def __enter__(self) -> TableSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was printed."""

    rows: int
    cut: bool
    """More rows arrived (or existed) than the terminal showed."""
    summary: ResultSummary | None
    seconds: float


def print_stream(
    open_stream: Callable[[], ResultSource],
    display: Display,
    *,
    progress: Progress | None = None,
) -> Outcome:
    """Open the result (`open_stream`), print it as it arrives, and say on stderr how
    many rows, how long, and what was left out. Ctrl-C or a pager's quit cancels the
    query at the source."""
    progress = progress or Progress(display.err, shown=display.progress_shown)
    progress.start()
    cap = display.row_cap
    shown = 0
    cut = False
    summary: ResultSummary | None = None
    try:
        with open_stream() as stream:
            sink = TerminalOutput(display, progress.stop if display.on_terminal else _nothing)
            max_width = DEFAULT_MAX_WIDTH if display.on_terminal else None
            writer = open_writer(display.fmt, sink, stream.schema, max_width=max_width)
            try:
                batches = iter(stream)
                for batch in batches:
                    progress.rows += batch.num_rows
                    if cap is not None and shown + batch.num_rows > cap:
                        # One row past the cap: there are more. The rest is not read;
                        # leaving the stream cancels the query.
                        writer.write(batch.slice(0, cap - shown))
                        shown = cap
                        cut = True
                        batches.close()  # type: ignore[attr-defined]
                        break
                    if batch.num_rows:
                        writer.write(batch)
                        shown += batch.num_rows
                summary = stream.summary
                writer.close()
            finally:
                with contextlib.suppress(BrokenPipeError):
                    sink.close()
    finally:
        progress.stop()
    return Outcome(shown, cut, summary, progress.elapsed())


def _nothing() -> None:
    pass
