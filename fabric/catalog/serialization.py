"""The metadata store's input checks and JSON documents: names, the no-secrets rule, entities.

The store checks and encodes its input here (audit events and the connection admin use the
same checks), so the same names are refused and the same keys are treated as secrets
everywhere, and an entity is written as the same JSON documents (columns with their exact
Arrow types as base64 IPC schemas, keys kept whole and in order) whichever database keeps it.

Everything here is checked before the store sends anything to its database: a value that is
refused never reaches a file, a table or a write-ahead log.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import pyarrow as pa

from connectors import registry
from fabric.errors import InvalidArgument, NotFound, VersionConflict
from fabric.model import (
    ColumnInfo,
    Connection,
    Entity,
    ForeignKey,
    PhysicalTable,
    PlaceKey,
    SettingValue,
    TableInfo,
    TableKind,
)

# -- the no-secrets rule -------------------------------------------------------------------

SECRET_KEY_SUFFIXES: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "secret_key",
)
"""Endings (case-insensitive) of keys that name a secret: `password`, `db_password`,
`client_secret`, `sslpassword`, `access_token` (and `pwd`, alone). Keys that merely mention
one (`password_ref`, `token_url`) are allowed: they name where a secret is, not the secret."""


def looks_like_secret(key: str) -> bool:
    """True when a setting or audit detail named `key` would hold a secret."""
    folded = key.lower()
    return folded == "pwd" or folded.endswith(SECRET_KEY_SUFFIXES)


# -- names -----------------------------------------------------------------------------------

MAX_NAME_LENGTH: Final = 128
MAX_ACTOR_LENGTH: Final = 256

IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an entity name must look like: a plain, unquoted SQL identifier."""

CONNECTION_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""What a connection name must look like."""


def check_name(name: str | None, what: str, *, optional: bool = False) -> None:
    """InvalidArgument unless `name` (a tenant, stage, ...) is a non-empty string of at most
    MAX_NAME_LENGTH characters, or None where it is `optional`."""
    if (name is not None or not optional) and (
        not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH
    ):
        raise InvalidArgument(f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH}")


def check_connection_name(name: str) -> None:
    if not isinstance(name, str) or CONNECTION_NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"connection name {name!r} is not valid: use 1 to {MAX_NAME_LENGTH} letters, "
            "digits, '_', '.' or '-', not starting with '.' or '-'"
        )


def check_kind(kind: str) -> str:
    """A kind the connector registry knows; InvalidArgument listing them otherwise."""
    if kind not in registry.kinds():
        known = ", ".join(registry.kinds())
        raise InvalidArgument(f"unknown connection kind {kind!r}; use one of {known}")
    return kind


def check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR_LENGTH:
        raise InvalidArgument(
            f"actor must be a non-empty string of at most {MAX_ACTOR_LENGTH} characters"
        )


def check_expected_version(value: int | None, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer, not {value!r}")


def connection_not_found(tenant: str, name: str) -> NotFound:
    return NotFound(f"connection {name!r} not found in tenant {tenant!r}")


def connection_changed(name: str, expected: int, current: int) -> VersionConflict:
    return VersionConflict(
        f"connection {name!r} changed since version {expected} (now {current}); reload and retry"
    )


def catalog_changed(name: str, expected: int, current: int) -> VersionConflict:
    return VersionConflict(
        f"catalog of connection {name!r} changed since version {expected} (now {current}); "
        "reload and retry"
    )


def utc_now() -> datetime:
    """The wall clock in UTC (stores take it as a parameter so tests can fix it)."""
    return datetime.now(UTC)


def check_utc(at: datetime, what: str = "time") -> datetime:
    """`at` in UTC; InvalidArgument for a naive datetime (its zone would be a guess)."""
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise InvalidArgument(f"{what} must be a timezone-aware datetime")
    return at.astimezone(UTC)


# -- connections -------------------------------------------------------------------------


def stages_document(
    stages: Mapping[str, Mapping[str, SettingValue]],
) -> dict[str, dict[str, SettingValue]]:
    """The stages of a connection as plain dicts, after checking them: at least one stage,
    scalar settings only, and no setting whose key names a secret."""
    if not isinstance(stages, Mapping) or not stages:
        raise InvalidArgument("a connection needs settings for at least one stage")
    plain: dict[str, dict[str, SettingValue]] = {}
    for stage, settings in stages.items():
        if not isinstance(stage, str) or not stage:
            raise InvalidArgument("stage names must be non-empty strings")
        if not isinstance(settings, Mapping):
            raise InvalidArgument(f"settings of stage {stage!r} must be a mapping")
        plain[stage] = {}
        for key, value in settings.items():
            if not isinstance(key, str) or not key:
                raise InvalidArgument(f"setting names of stage {stage!r} must be strings")
            if looks_like_secret(key):
                raise InvalidArgument(
                    f"setting {key!r} of stage {stage!r} looks like a secret: put secrets in "
                    "the secret store and refer to them with a secret reference; the metadata "
                    "store never keeps a secret"
                )
            if not isinstance(value, str | int | float | bool) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise InvalidArgument(
                    f"setting {key!r} of stage {stage!r} must be a string, integer, finite "
                    f"number or boolean, not {type(value).__name__}"
                )
            plain[stage][key] = value
    return plain


def secret_refs_document(secret_refs: Mapping[str, str]) -> dict[str, str]:
    """Stage -> secret store reference, checked (references, never secrets)."""
    if not isinstance(secret_refs, Mapping):
        raise InvalidArgument("secret_refs must map a stage to a secret reference")
    for stage, ref in secret_refs.items():
        if not isinstance(stage, str) or not stage or not isinstance(ref, str) or not ref:
            raise InvalidArgument(
                "secret_refs must map non-empty stage names to non-empty secret references"
            )
    return dict(secret_refs)


def connection_from_documents(
    tenant: str,
    name: str,
    kind: str,
    stages: Mapping[str, Mapping[str, SettingValue]],
    secret_refs: Mapping[str, str],
    version: int,
) -> Connection:
    """A read-only Connection from stored values (documents already decoded)."""
    return Connection(
        tenant=tenant,
        name=name,
        kind=kind,
        stages=MappingProxyType(
            {stage: MappingProxyType(dict(settings)) for stage, settings in stages.items()}
        ),
        secret_refs=MappingProxyType(dict(secret_refs)),
        version=int(version),
    )


# -- entities ----------------------------------------------------------------------------


def check_entity(entity: Entity) -> None:
    """InvalidArgument unless `entity` is consistent and its name a plain identifier."""
    if not isinstance(entity.name, str) or IDENTIFIER_RE.fullmatch(entity.name) is None:
        raise InvalidArgument(
            f"entity name {entity.name!r} is not a valid SQL identifier: use letters, digits "
            "and '_', not starting with a digit"
        )
    if len(entity.name) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"entity name {entity.name!r} is longer than {MAX_NAME_LENGTH}")
    if not entity.schema or not entity.table:
        raise InvalidArgument(f"entity {entity.name!r} needs a schema and a table")
    if not entity.columns:
        raise InvalidArgument(f"entity {entity.name!r} needs at least one column")
    if not isinstance(entity.stage_tables, Mapping):
        raise InvalidArgument(f"stage_tables of entity {entity.name!r} must be a mapping")
    for stage, physical in entity.stage_tables.items():
        if (
            not isinstance(stage, str)
            or not stage
            or len(stage) > MAX_NAME_LENGTH
            or not isinstance(physical, tuple)
            or len(physical) != 2
            or not all(isinstance(part, str) for part in physical)
            or not physical[1]
        ):
            raise InvalidArgument(
                f"stage_tables of entity {entity.name!r} must map stage names to "
                "(schema, table) pairs with a table name"
            )
    if not isinstance(entity.stage_physical, Mapping) or not all(
        isinstance(record, PhysicalTable)
        and key == record.key
        and all(isinstance(part, str) and part for part in (record.configuration, record.table))
        for key, record in entity.stage_physical.items()
    ):
        raise InvalidArgument(
            f"stage_physical of entity {entity.name!r} must hold physical tables by their "
            "(configuration, schema, table)"
        )
    names = [column.name for column in entity.columns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(f"entity {entity.name!r} repeats column(s) {duplicates}")
    known = set(names)
    hidden = entity.hidden_columns
    if hidden is not None and (
        not isinstance(hidden, tuple)
        or not all(isinstance(name, str) and name for name in hidden)
        or len(set(hidden)) != len(hidden)
        or known.intersection(hidden)
    ):
        raise InvalidArgument(
            f"hidden_columns of entity {entity.name!r} must be distinct column names that "
            "are not selected"
        )
    missing = [name for name in entity.primary_key if name not in known]
    if missing:
        raise InvalidArgument(
            f"primary key column(s) {missing} of entity {entity.name!r} are not among its columns"
        )
    for fk in entity.foreign_keys:
        missing = [name for name in fk.columns if name not in known]
        if missing or not fk.columns or len(fk.columns) != len(fk.referenced_columns):
            raise InvalidArgument(
                f"foreign key {fk.name!r} of entity {entity.name!r} must use selected columns "
                "and reference as many columns as it has"
            )


def check_selection(entities: Sequence[Entity], *, allow_empty: bool) -> list[Entity]:
    """The entities of a selection, checked as a whole (all or none).

    InvalidArgument for an empty list (unless `allow_empty`), an inconsistent entity, or two
    entities whose names differ only in case.
    """
    if isinstance(entities, Entity):
        entities = [entities]
    if not entities and not allow_empty:
        raise InvalidArgument("select at least one entity")
    seen: dict[str, str] = {}
    for entity in entities:
        if not isinstance(entity, Entity):
            raise InvalidArgument(f"expected an Entity, not {type(entity).__name__}")
        check_entity(entity)
        key = entity.name.lower()
        if key in seen:
            raise InvalidArgument(
                f"entity names {seen[key]!r} and {entity.name!r} collide: entity names "
                "are unique per connection, ignoring case"
            )
        seen[key] = entity.name
    return list(entities)


def stage_tables_document(stage_tables: Mapping[str, tuple[str, str]]) -> dict[str, list[str]]:
    """Stage -> [schema, table], stages sorted (an empty dict when there are none)."""
    return {stage: [schema, table] for stage, (schema, table) in sorted(stage_tables.items())}


def check_unselect(names: Sequence[str]) -> list[str]:
    """The names of an unselect request; InvalidArgument when it names nothing."""
    if isinstance(names, str):
        names = [names]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise InvalidArgument("name at least one entity to unselect")
    return list(names)


def arrow_type_to_text(arrow_type: pa.DataType | None) -> str | None:
    """An Arrow type as text that `arrow_type_from_text` turns back into an equal type
    (the IPC schema encoding, base64): exact for decimals, time zones, units, nesting."""
    if arrow_type is None:
        return None
    schema = pa.schema([pa.field("t", arrow_type)])
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def arrow_type_from_text(text: str | None) -> pa.DataType | None:
    """The inverse of `arrow_type_to_text`."""
    if text is None:
        return None
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    arrow_type: pa.DataType = schema.field(0).type
    return arrow_type


def columns_document(columns: Sequence[ColumnInfo]) -> list[dict[str, Any]]:
    return [
        {
            "name": column.name,
            "source_type": column.source_type,
            "nullable": column.nullable,
            # Readable form for people looking at the store; `arrow_ipc` is the truth.
            "arrow": None if column.arrow_type is None else str(column.arrow_type),
            "arrow_ipc": arrow_type_to_text(column.arrow_type),
        }
        for column in columns
    ]


def foreign_keys_document(foreign_keys: Sequence[ForeignKey]) -> list[dict[str, Any]]:
    # Every field, by its name; JSON writes the column tuples as lists.
    return [asdict(fk) for fk in foreign_keys]


def stage_physical_document(
    records: Mapping[PlaceKey, PhysicalTable],
) -> list[dict[str, Any]]:
    """The physical tables recorded for an entity (every column, keys, whether it
    exists), in (configuration, schema, table) order; an empty list when none was."""
    return [
        {
            "configuration": record.configuration,
            "schema": record.schema,
            "table": record.table,
            "columns": columns_document(record.columns),
            "primary_key": list(record.primary_key),
            "foreign_keys": foreign_keys_document(record.foreign_keys),
            "exists": record.exists,
        }
        for _, record in sorted(records.items())
    ]


def table_info_document(info: TableInfo) -> dict[str, Any]:
    """What discovery found about one table, as JSON (for the bus: a replica's answer to
    the platform); `table_info_from_document` reads it back equal."""
    return {
        "schema": info.schema,
        "name": info.name,
        "kind": info.kind.value,
        "columns": columns_document(info.columns),
        "primary_key": list(info.primary_key),
        "foreign_keys": foreign_keys_document(info.foreign_keys),
    }


def table_info_from_document(item: Mapping[str, Any]) -> TableInfo:
    """The inverse of `table_info_document`; KeyError, TypeError or ValueError when it
    is not one."""
    return TableInfo(
        schema=str(item["schema"]),
        name=str(item["name"]),
        columns=_columns(item["columns"]),
        primary_key=tuple(str(c) for c in item["primary_key"]),
        foreign_keys=_foreign_keys(item["foreign_keys"]),
        kind=TableKind(item["kind"]),
    )


def _columns(items: Sequence[Mapping[str, Any]]) -> tuple[ColumnInfo, ...]:
    return tuple(
        ColumnInfo(
            name=item["name"],
            source_type=item["source_type"],
            arrow_type=arrow_type_from_text(item["arrow_ipc"]),
            nullable=bool(item["nullable"]),
        )
        for item in items
    )


def _foreign_keys(items: Sequence[Mapping[str, Any]]) -> tuple[ForeignKey, ...]:
    return tuple(
        ForeignKey(
            name=item["name"],
            columns=tuple(item["columns"]),
            referenced_schema=item["referenced_schema"],
            referenced_table=item["referenced_table"],
            referenced_columns=tuple(item["referenced_columns"]),
        )
        for item in items
    )


def _physical(item: Mapping[str, Any]) -> PhysicalTable:
    return PhysicalTable(
        configuration=str(item["configuration"]),
        schema=str(item["schema"]),
        table=str(item["table"]),
        columns=_columns(item["columns"]),
        primary_key=tuple(item["primary_key"]),
        foreign_keys=_foreign_keys(item["foreign_keys"]),
        exists=bool(item["exists"]),
    )


def entity_from_documents(
    name: str,
    schema: str,
    table: str,
    columns: Sequence[Mapping[str, Any]],
    primary_key: Sequence[str],
    foreign_keys: Sequence[Mapping[str, Any]],
    stage_tables: Mapping[str, Sequence[str]] | None,
    hidden_columns: Sequence[str] | None = None,
    stage_physical: Sequence[Mapping[str, Any]] | None = None,
) -> Entity:
    """An entity from its stored documents (the inverse of the `..._document` functions;
    no `stage_tables` or `stage_physical`, from a row written before they existed, is no
    override and nothing recorded; no `hidden_columns`, likewise, is "not known")."""
    return Entity(
        name=name,
        schema=schema,
        table=table,
        columns=_columns(columns),
        primary_key=tuple(primary_key),
        foreign_keys=_foreign_keys(foreign_keys),
        stage_tables=MappingProxyType(
            {stage: (str(pair[0]), str(pair[1])) for stage, pair in (stage_tables or {}).items()}
        ),
        hidden_columns=None if hidden_columns is None else tuple(hidden_columns),
        stage_physical=MappingProxyType(
            {record.key: record for record in map(_physical, stage_physical or ())}
        ),
    )
