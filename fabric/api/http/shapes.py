"""The gateway's objects as the REST API's JSON: connections (never a password), tables,
entities, drift reports, audit events."""

from __future__ import annotations

from typing import Any

from connectors.registry import ConnectorSpec
from fabric.catalog.audit import AuditEvent
from fabric.model import ColumnInfo, Connection, Entity, ForeignKey, SettingValue, TableInfo
from fabric.platform.refresh import RefreshReport


def connection(value: Connection, catalog_version: int) -> dict[str, Any]:
    return {
        "name": value.name,
        "kind": value.kind,
        "version": value.version,
        "catalog_version": catalog_version,
        "stages": [
            {
                "stage": stage,
                "settings": dict(settings),
                "has_password": stage in value.secret_refs,
            }
            for stage, settings in sorted(value.stages.items())
        ],
    }


def kind(spec: ConnectorSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "dialect": spec.dialect,
        "description": spec.description,
        "settings": [
            {
                "name": s.name,
                "type": s.type.value,
                "required": s.required,
                "secret": s.secret,
                "default": s.default,
                "help": s.description,
            }
            for s in spec.settings
        ],
    }


def column(value: ColumnInfo) -> dict[str, Any]:
    return {
        "name": value.name,
        "type": value.source_type,
        "arrow_type": None if value.arrow_type is None else str(value.arrow_type),
        "nullable": value.nullable,
        "supported": value.supported,
    }


def foreign_key(value: ForeignKey) -> dict[str, Any]:
    return {
        "name": value.name,
        "columns": list(value.columns),
        "references": {
            "schema": value.referenced_schema,
            "table": value.referenced_table,
            "columns": list(value.referenced_columns),
        },
    }


def table(value: TableInfo) -> dict[str, Any]:
    return {
        "schema": value.schema,
        "name": value.name,
        "kind": value.kind.value,
        "columns": [column(c) for c in value.columns],
        "primary_key": list(value.primary_key),
        "foreign_keys": [foreign_key(fk) for fk in value.foreign_keys],
    }


def entity(value: Entity) -> dict[str, Any]:
    return {
        "name": value.name,
        "table": {"schema": value.schema, "name": value.table},
        "columns": [column(c) for c in value.columns],
        "selected_columns": [c.name for c in value.columns],
        "primary_key": list(value.primary_key),
        "foreign_keys": [foreign_key(fk) for fk in value.foreign_keys],
        "stage_tables": {
            stage: {"schema": schema, "name": name}
            for stage, (schema, name) in sorted(value.stage_tables.items())
        },
    }


def refresh_report(report: RefreshReport) -> dict[str, Any]:
    return {
        "drift": [
            {
                "kind": d.kind.value,
                "entity": d.entity,
                "schema": d.schema,
                "table": d.table,
                "column": d.column,
                "old_type": d.old_type,
                "new_type": d.new_type,
                "detail": d.detail,
            }
            for d in report.drift
        ],
        "previous_catalog_version": report.previous_version,
        "catalog_version": report.catalog_version,
        "entities": [entity(e) for e in report.entities],
    }


def _audit_value(value: object) -> SettingValue:
    return value if isinstance(value, bool | int | float | str) else str(value)


def audit_event(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "connection": event.connection,
        "stage": event.stage,
        "details": {k: _audit_value(v) for k, v in event.details.items()},
    }
