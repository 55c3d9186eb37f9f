"""`fabric sql CONNECTION`: an interactive SQL shell through the gateway.

A statement may span lines and ends with `;` (or a line of its own that is empty after
a statement). History is kept in a file, Tab completes entity and column names of the
selection (after `entity.`, that entity's columns) and SQL keywords, and each result
ends with its row count and time. Ctrl-C cancels a running query (at the source too)
and clears the line at the prompt; Ctrl-D or `\\q` leaves.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from fabric.client import FabricClient, ResultStream
from fabric.config import Settings
from fabric.console import FORMATS
from fabric.errors import FabricError, PermissionDenied
from fabric.terminal.arguments import UsageError, parse_param
from fabric.terminal.output import Display, print_stream
from fabric.terminal.query import summary_line

__all__ = ["SelectionCompleter", "run_shell"]

HELP = """\
Statements end with ';'. Parameters are :NAME in the SQL, set with \\set.
  \\d              list the selected entities
  \\d ENTITY       an entity's columns
  \\x              vertical output on/off (one 'column | value' line per field)
  \\format FORMAT  table, vertical, csv, json or jsonl
  \\set NAME[:TYPE]=VALUE   a parameter (\\set alone lists them); \\unset NAME
  \\q              quit (or Ctrl-D); Ctrl-C cancels a running query
"""

KEYWORDS = (
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "RIGHT",
    "FULL",
    "INNER",
    "OUTER",
    "CROSS",
    "ON",
    "USING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "LIKE",
    "ILIKE",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DISTINCT",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "WITH",
    "OVER",
    "PARTITION",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "CAST",
    "COALESCE",
    "EXTRACT",
    "DATE_TRUNC",
    "TRUE",
    "FALSE",
)

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]*)?$")


@dataclass
class Selection:
    """Entity and column names for completion, read once from the gateway."""

    columns: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    """Why there are no names (the token may not list the catalog), or ""."""

    @staticmethod
    def read(client: FabricClient, connection: str) -> Selection:
        try:
            listing = client.list_entities(connection)
        except PermissionDenied:
            return Selection(
                note="(the token may not list the catalog: names are not completed; a "
                "developer token can, `fabric token --role developer`)"
            )
        return Selection({e.name: [c.name for c in e.columns] for e in listing.entities})


class SelectionCompleter(Completer):
    """prompt_toolkit completion of entity and column names (and keywords)."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def words(self, before: str) -> list[str]:
        """What the word ending `before` may become."""
        match = _WORD.search(before)
        if match is None:
            return []
        word = match.group(0)
        if "." in word:
            entity, _, prefix = word.partition(".")
            columns = self.selection.columns.get(entity, [])
            return [c for c in columns if c.lower().startswith(prefix.lower())]
        lowered = word.lower()
        names = [*self.selection.columns]
        names += sorted({c for columns in self.selection.columns.values() for c in columns})
        found = [n for n in dict.fromkeys(names) if n.lower().startswith(lowered)]
        found += [k for k in KEYWORDS if k.lower().startswith(lowered)]
        return [f for f in found if f != word]

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        match = _WORD.search(before)
        if match is None:
            return
        word = match.group(0)
        typed = word.rpartition(".")[2] if "." in word else word
        for candidate in self.words(before):
            yield Completion(candidate, start_position=-len(typed))


def _complete_statement(text: str) -> bool:
    """Whether Enter should run `text`: a `;` at the end, a backslash command, or nothing."""
    stripped = text.strip()
    return not stripped or stripped.endswith(";") or stripped.startswith("\\")


@dataclass
class _State:
    fmt: str
    params: dict[str, Any] = field(default_factory=dict)


class Shell:
    def __init__(
        self, args: argparse.Namespace, client: FabricClient, selection: Selection
    ) -> None:
        self.args = args
        self.client = client
        self.selection = selection
        self.state = _State(fmt=args.format)

    # -- one input -------------------------------------------------------------------

    def handle(self, text: str) -> bool:
        """Run one input; False to leave the shell."""
        stripped = text.strip()
        if not stripped:
            return True
        if stripped.startswith("\\"):
            return self.command(stripped)
        sql = stripped.rstrip(";").strip()
        if sql:
            self.run(sql)
        return True

    def run(self, sql: str) -> None:
        display = Display(
            fmt=self.state.fmt, terminal_rows=self.args.terminal_rows, pager=not self.args.no_pager
        )
        max_rows = display.request_rows(None)

        def open_stream() -> ResultStream:
            return self.client.stream(self.args.connection, sql, self.state.params, 0, max_rows)

        try:
            outcome = print_stream(open_stream, display)
        except KeyboardInterrupt:
            print("-- cancelled", file=sys.stderr, flush=True)
            return
        except BrokenPipeError:
            print("-- stopped: the pager was closed", file=sys.stderr, flush=True)
            return
        except FabricError as error:
            print(f"error ({error.code}): {error.message}", file=sys.stderr, flush=True)
            return
        print(summary_line(outcome, display), file=sys.stderr, flush=True)

    def command(self, text: str) -> bool:
        name, _, rest = text.partition(" ")
        rest = rest.strip().rstrip(";").strip()
        if name in ("\\q", "\\quit"):
            return False
        if name in ("\\?", "\\h", "\\help"):
            print(HELP, end="")
        elif name == "\\x":
            self.state.fmt = "table" if self.state.fmt == "vertical" else "vertical"
            print(f"-- output format: {self.state.fmt}")
        elif name == "\\format":
            if rest not in FORMATS:
                print(f"-- formats: {', '.join(FORMATS)}", file=sys.stderr)
            else:
                self.state.fmt = rest
                print(f"-- output format: {rest}")
        elif name == "\\d":
            self.describe(rest)
        elif name == "\\set":
            self.set_param(rest)
        elif name == "\\unset":
            self.state.params.pop(rest, None)
        else:
            print(f"-- unknown command {name}; \\help lists them", file=sys.stderr)
        return True

    def describe(self, entity: str) -> None:
        columns = self.selection.columns
        if not entity:
            for name in columns:
                print(name)
            if self.selection.note:
                print(self.selection.note, file=sys.stderr)
        elif entity in columns:
            for column in columns[entity]:
                print(f"  {column}")
        else:
            print(f"-- no selected entity {entity!r}", file=sys.stderr)

    def set_param(self, text: str) -> None:
        if not text:
            for name, value in sorted(self.state.params.items()):
                print(f"{name} = {value!r}")
            return
        try:
            name, value = parse_param(text)
        except UsageError as error:
            print(f"-- {error.message}", file=sys.stderr)
            return
        self.state.params[name] = value


def _history(args: argparse.Namespace, settings: Settings) -> History:
    path = args.history if args.history is not None else str(settings.home / "sql_history")
    if not path:
        return InMemoryHistory()
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return FileHistory(str(Path(path).expanduser()))


def _lines(stream: Iterable[str]) -> Iterator[str]:
    """Statements from a stream that is not a terminal, split at `;` line ends."""
    pending: list[str] = []
    for line in stream:
        pending.append(line)
        if _complete_statement("".join(pending)):
            yield "".join(pending)
            pending = []
    if "".join(pending).strip():
        yield "".join(pending)


def run_shell(args: argparse.Namespace, client: FabricClient, settings: Settings) -> int:
    selection = Selection.read(client, args.connection)
    shell = Shell(args, client, selection)
    if not sys.stdin.isatty():
        # Piped in: run each statement, no prompt (`fabric sql sales < script.sql`).
        for text in _lines(sys.stdin):
            if not shell.handle(text):
                break
        return 0
    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if _complete_statement(buffer.text):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    session: PromptSession[str] = PromptSession(
        history=_history(args, settings),
        completer=SelectionCompleter(selection),
        key_bindings=bindings,
        multiline=True,
        prompt_continuation=lambda width, line, wrapped: "." * (width - 2) + "> ",
    )
    print(
        f"fabric sql: connection {args.connection!r}; statements end with ';', "
        "\\help for commands, \\q to quit"
    )
    if selection.note:
        print(selection.note)
    prompt = f"{args.connection}=> "
    while True:
        try:
            text = session.prompt(prompt)
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line
        except EOFError:
            break
        if not shell.handle(text):
            break
    return 0
