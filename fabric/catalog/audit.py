"""Audit events: who changed what, when, in which connection and stage. Never a secret.

Every store method that changes something writes its audit event in the same transaction
as the change (the `actor` argument, "system" by default, says who): the change and its
record commit together or not at all, so no code path can change the metadata and forget
the audit. Other administrative actions (testing a connection, rotating a secret) are
recorded with `MetadataStore.record_audit`.

Audit events are history: deleting a connection keeps the events about it. They hold no
secret, only names, counts and versions; a detail whose key names a secret is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from fabric.catalog.serialization import (
    AUDIT_ACTION_RE,
    AuditValue,
    audit_details_document,
    changed_keys,
    check_actor,
    check_stage_name,
    check_tenant,
    check_utc,
)
from fabric.errors import InvalidArgument
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

_MAX_NAMES_TEXT: Final = 1000


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
        check_tenant(self.tenant)
        check_actor(self.actor)
        if not isinstance(self.action, str) or AUDIT_ACTION_RE.fullmatch(self.action) is None:
            raise InvalidArgument(
                f"audit action {self.action!r} must be dotted lower-case words, "
                "like 'connection.create'"
            )
        check_stage_name(self.connection, "the connection of an audit event")
        check_stage_name(self.stage, "the stage of an audit event")
        object.__setattr__(self, "details", MappingProxyType(audit_details_document(self.details)))


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


def connection_updated(
    at: datetime, actor: str, old: Connection, new: Connection, catalog_version: int
) -> AuditEvent:
    stages = changed_keys(old.stages, new.stages)
    refs = changed_keys(old.secret_refs, new.secret_refs)
    return AuditEvent(
        at=at,
        tenant=new.tenant,
        actor=actor,
        action=CONNECTION_UPDATE,
        connection=new.name,
        stage=only([*stages, *refs]),
        details={
            "stages_changed": names_text(stages),
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
