"""Audit events: who changed what, when, in which connection and stage. Never a secret.

Every store method that changes something writes its audit event in the same transaction
as the change (the `actor` argument, "system" by default, says who): the change and its
record commit together or not at all, so no code path can change the metadata and forget
the audit. Other administrative actions (testing a connection, rotating a secret) are
recorded with `MetadataStore.record_audit`.

Who: the API records the verified token's principal (`sub`); the CLI, which writes the
metadata store directly and has no token, records `cli:<login>` (the operating system
account that ran it). What: a connection update records the settings of each changed
stage before and after (settings are never secrets: keys that name one are refused), and
which stages had a password set or cleared (never the password). Refused attempts are
recorded too (`<action>.refused`, with a `reason`): a call refused for its role, a change
made against a version someone else changed first.

Audit events are history: deleting a connection keeps the events about it, including
the settings an update recorded. They hold no secret, only names, settings, counts and
versions; a detail whose key names a secret is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from fabric.catalog.serialization import (
    MAX_NAME_LENGTH,
    check_actor,
    check_name,
    check_utc,
    looks_like_secret,
)
from fabric.errors import InvalidArgument, VersionConflict
from fabric.model import Connection

SYSTEM_ACTOR: Final = "system"
"""The actor of changes made without a caller (the CLI, the demo, migrations of data)."""

CONNECTION_CREATE: Final = "connection.create"
CONNECTION_UPDATE: Final = "connection.update"
CONNECTION_DELETE: Final = "connection.delete"
CATALOG_SELECT: Final = "catalog.select"
CATALOG_UNSELECT: Final = "catalog.unselect"
CATALOG_REPLACE: Final = "catalog.replace"
CATALOG_BUMP: Final = "catalog.bump"

ACTION_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
"""What an audit action must look like: dotted lower-case words (`connection.create`)."""

MAX_DETAILS: Final = 64
MAX_TEXT: Final = 4096
MAX_LIMIT: Final = 10_000
_MAX_NAMES_TEXT: Final = 1000

AuditValue = str | int | bool


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One administrative change. `at` is kept in UTC; `details` are scalar facts (names,
    counts, versions) and can never hold a secret: keys that name one are refused here,
    and again by the store that writes the event."""

    at: datetime
    tenant: str
    actor: str
    action: str
    """What was done, as dotted lower-case words: `connection.create`, `catalog.select`."""
    connection: str | None = None
    stage: str | None = None
    details: Mapping[str, AuditValue] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", check_utc(self.at, "the time of an audit event"))
        check_name(self.tenant, "tenant")
        check_actor(self.actor)
        if not isinstance(self.action, str) or ACTION_RE.fullmatch(self.action) is None:
            raise InvalidArgument(
                f"audit action {self.action!r} must be dotted lower-case words, "
                "like 'connection.create'"
            )
        check_name(self.connection, "the connection of an audit event", optional=True)
        check_name(self.stage, "the stage of an audit event", optional=True)
        object.__setattr__(self, "details", MappingProxyType(details_document(self.details)))


def details_document(details: Mapping[str, AuditValue]) -> dict[str, AuditValue]:
    """Audit details as a plain dict, after checking them: scalar values only, bounded, and
    no key that names a secret (the message never repeats the refused value)."""
    if not isinstance(details, Mapping):
        raise InvalidArgument("audit details must be a mapping")
    if len(details) > MAX_DETAILS:
        raise InvalidArgument(f"audit events carry at most {MAX_DETAILS} details")
    plain: dict[str, AuditValue] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not key or len(key) > MAX_NAME_LENGTH:
            raise InvalidArgument("audit detail names must be non-empty strings")
        if looks_like_secret(key):
            raise InvalidArgument(
                f"audit detail {key!r} looks like a secret; an audit event says who changed "
                "what, never a secret value"
            )
        if not isinstance(value, str | int | bool):
            raise InvalidArgument(
                f"audit detail {key!r} must be a string, integer or boolean, "
                f"not {type(value).__name__}"
            )
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise InvalidArgument(f"audit detail {key!r} is longer than {MAX_TEXT}")
        plain[key] = value
    return dict(sorted(plain.items()))


def check_limit(limit: int) -> None:
    """InvalidArgument unless `limit` (of a listing of events) is from 1 to MAX_LIMIT."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}")


def names_text(names: Iterable[str]) -> str:
    """Names as one detail value: comma-separated, cut (with a count) if very long."""
    items = list(names)
    text = ",".join(items)
    if len(text) <= _MAX_NAMES_TEXT:
        return text
    return text[: _MAX_NAMES_TEXT - 20].rsplit(",", 1)[0] + f",... ({len(items)} in all)"


def only(names: Iterable[str]) -> str | None:
    """The one name in `names`, or None when there are none or several (the audit event's
    stage is set when a change concerns exactly one stage)."""
    items = sorted(set(names))
    return items[0] if len(items) == 1 else None


# -- the events the stores write with their changes ---------------------------------------
# One builder per change, shared by every store, so both record the same facts.


def connection_created(
    at: datetime, actor: str, connection: Connection, catalog_version: int
) -> AuditEvent:
    return AuditEvent(
        at=at,
        tenant=connection.tenant,
        actor=actor,
        action=CONNECTION_CREATE,
        connection=connection.name,
        stage=only(connection.stages),
        details={
            "kind": connection.kind,
            "stages": names_text(sorted(connection.stages)),
            "secret_ref_stages": names_text(sorted(connection.secret_refs)),
            "version": connection.version,
            "catalog_version": catalog_version,
        },
    )


def _changed_keys(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """Keys added, removed or whose value differs, sorted."""
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def settings_text(stages: Mapping[str, Mapping[str, object]], names: Iterable[str]) -> str:
    """The settings of the named stages as compact JSON (keys sorted); a stage without
    settings is left out. Cut, and marked, past MAX_TEXT."""
    chosen = {name: dict(stages[name]) for name in names if name in stages}
    text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def connection_updated(
    at: datetime, actor: str, old: Connection, new: Connection, catalog_version: int
) -> AuditEvent:
    stages = _changed_keys(old.stages, new.stages)
    refs = _changed_keys(old.secret_refs, new.secret_refs)
    set_ = [stage for stage in refs if stage in new.secret_refs]
    cleared = [stage for stage in refs if stage not in new.secret_refs]
    return AuditEvent(
        at=at,
        tenant=new.tenant,
        actor=actor,
        action=CONNECTION_UPDATE,
        connection=new.name,
        stage=only([*stages, *refs]),
        details={
            "stages_changed": names_text(stages),
            "settings_before": settings_text(old.stages, stages),
            "settings_after": settings_text(new.stages, stages),
            "password_set": names_text(set_),
            "password_cleared": names_text(cleared),
            "secret_refs_changed": names_text(refs),
            "previous_version": old.version,
            "version": new.version,
            "catalog_version": catalog_version,
        },
    )


def connection_deleted(
    at: datetime, actor: str, tenant: str, name: str, version: int, entities: int
) -> AuditEvent:
    return AuditEvent(
        at=at,
        tenant=tenant,
        actor=actor,
        action=CONNECTION_DELETE,
        connection=name,
        details={"version": version, "entities": entities},
    )


def catalog_changed(
    at: datetime,
    actor: str,
    action: str,
    tenant: str,
    connection: str,
    stage: str | None,
    names: Iterable[str],
    catalog_version: int,
) -> AuditEvent:
    """A selection change (select, unselect, replace) or a bump (no names)."""
    items = list(names)
    details: dict[str, AuditValue] = {"catalog_version": catalog_version}
    if action != CATALOG_BUMP:
        details["entities"] = names_text(items)
        details["count"] = len(items)
    return AuditEvent(
        at=at,
        tenant=tenant,
        actor=actor,
        action=action,
        connection=connection,
        stage=stage,
        details=details,
    )


# -- refused attempts ----------------------------------------------------------------------

REFUSED_SUFFIX: Final = ".refused"
CALL: Final = "call"
"""The action of a refused call whose request was never read (refused for its role)."""


def refused(
    at: datetime,
    tenant: str,
    actor: str,
    action: str,
    reason: str,
    *,
    connection: str | None = None,
    stage: str | None = None,
    details: Mapping[str, AuditValue] | None = None,
) -> AuditEvent:
    """An attempt at `action` that was refused (`reason`: `permission_denied`,
    `version_conflict`); nothing was changed."""
    return AuditEvent(
        at=at,
        tenant=tenant,
        actor=actor,
        action=action + REFUSED_SUFFIX,
        connection=connection,
        stage=stage,
        details={"reason": reason, **(details or {})},
    )


@contextmanager
def version_conflicts_recorded(
    record: Callable[[AuditEvent], None],
    at: Callable[[], datetime],
    tenant: str,
    actor: str,
    action: str,
    connection: str,
    stage: str | None = None,
) -> Iterator[None]:
    """Around a change made against a version the caller named: a VersionConflict is
    recorded as a refused attempt (`record`, in a transaction of its own: the change's
    was rolled back), then raised as it was."""
    try:
        yield
    except VersionConflict:
        record(
            refused(
                at(),
                tenant,
                actor,
                action,
                "version_conflict",
                connection=connection,
                stage=stage,
            )
        )
        raise
