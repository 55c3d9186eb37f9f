from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SettingValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class StageConfig(_message.Message):
    __slots__ = ("stage", "settings", "password", "has_password")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SettingValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SettingValue, _Mapping]] = ...) -> None: ...
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    HAS_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    stage: str
    settings: _containers.MessageMap[str, SettingValue]
    password: str
    has_password: bool
    def __init__(self, stage: _Optional[str] = ..., settings: _Optional[_Mapping[str, SettingValue]] = ..., password: _Optional[str] = ..., has_password: _Optional[bool] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("name", "kind", "stages", "version", "catalog_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    stages: _containers.RepeatedCompositeFieldContainer[StageConfig]
    version: int
    catalog_version: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageConfig, _Mapping]]] = ..., version: _Optional[int] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class CreateConnectionRequest(_message.Message):
    __slots__ = ("name", "kind", "stages", "verify")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    stages: _containers.RepeatedCompositeFieldContainer[StageConfig]
    verify: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageConfig, _Mapping]]] = ..., verify: _Optional[bool] = ...) -> None: ...

class GetConnectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListConnectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConnectionsResponse(_message.Message):
    __slots__ = ("connections",)
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    connections: _containers.RepeatedCompositeFieldContainer[Connection]
    def __init__(self, connections: _Optional[_Iterable[_Union[Connection, _Mapping]]] = ...) -> None: ...

class UpdateConnectionRequest(_message.Message):
    __slots__ = ("name", "expected_version", "stages", "remove_stages", "clear_password_stages", "verify")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_STAGES_FIELD_NUMBER: _ClassVar[int]
    CLEAR_PASSWORD_STAGES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    stages: _containers.RepeatedCompositeFieldContainer[StageConfig]
    remove_stages: _containers.RepeatedScalarFieldContainer[str]
    clear_password_stages: _containers.RepeatedScalarFieldContainer[str]
    verify: bool
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageConfig, _Mapping]]] = ..., remove_stages: _Optional[_Iterable[str]] = ..., clear_password_stages: _Optional[_Iterable[str]] = ..., verify: _Optional[bool] = ...) -> None: ...

class DeleteConnectionRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteConnectionResponse(_message.Message):
    __slots__ = ("secrets_removed",)
    SECRETS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    secrets_removed: int
    def __init__(self, secrets_removed: _Optional[int] = ...) -> None: ...

class TestConnectionRequest(_message.Message):
    __slots__ = ("name", "stage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    stage: str
    def __init__(self, name: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class TestConnectionResponse(_message.Message):
    __slots__ = ("stage", "elapsed_us")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_US_FIELD_NUMBER: _ClassVar[int]
    stage: str
    elapsed_us: int
    def __init__(self, stage: _Optional[str] = ..., elapsed_us: _Optional[int] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("connection", "limit")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    connection: str
    limit: int
    def __init__(self, connection: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("at", "actor", "action", "connection", "stage", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    at: str
    actor: str
    action: str
    connection: str
    stage: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, at: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., connection: _Optional[str] = ..., stage: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "source_type", "arrow_type", "nullable", "supported")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ARROW_TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    source_type: str
    arrow_type: str
    nullable: bool
    supported: bool
    def __init__(self, name: _Optional[str] = ..., source_type: _Optional[str] = ..., arrow_type: _Optional[str] = ..., nullable: _Optional[bool] = ..., supported: _Optional[bool] = ...) -> None: ...

class ForeignKey(_message.Message):
    __slots__ = ("name", "columns", "referenced_schema", "referenced_table", "referenced_columns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    REFERENCED_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REFERENCED_TABLE_FIELD_NUMBER: _ClassVar[int]
    REFERENCED_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    referenced_schema: str
    referenced_table: str
    referenced_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., referenced_schema: _Optional[str] = ..., referenced_table: _Optional[str] = ..., referenced_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("schema", "name", "kind", "columns", "primary_key", "foreign_keys")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_KEYS_FIELD_NUMBER: _ClassVar[int]
    schema: str
    name: str
    kind: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    foreign_keys: _containers.RepeatedCompositeFieldContainer[ForeignKey]
    def __init__(self, schema: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., primary_key: _Optional[_Iterable[str]] = ..., foreign_keys: _Optional[_Iterable[_Union[ForeignKey, _Mapping]]] = ...) -> None: ...

class StageTable(_message.Message):
    __slots__ = ("stage", "schema", "table")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    schema: str
    table: str
    def __init__(self, stage: _Optional[str] = ..., schema: _Optional[str] = ..., table: _Optional[str] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("name", "schema", "table", "columns", "primary_key", "foreign_keys", "stage_tables")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_KEYS_FIELD_NUMBER: _ClassVar[int]
    STAGE_TABLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema: str
    table: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    foreign_keys: _containers.RepeatedCompositeFieldContainer[ForeignKey]
    stage_tables: _containers.RepeatedCompositeFieldContainer[StageTable]
    def __init__(self, name: _Optional[str] = ..., schema: _Optional[str] = ..., table: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., primary_key: _Optional[_Iterable[str]] = ..., foreign_keys: _Optional[_Iterable[_Union[ForeignKey, _Mapping]]] = ..., stage_tables: _Optional[_Iterable[_Union[StageTable, _Mapping]]] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("connection", "stage", "schemas")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    connection: str
    stage: str
    schemas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, connection: _Optional[str] = ..., stage: _Optional[str] = ..., schemas: _Optional[_Iterable[str]] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    def __init__(self, tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ...) -> None: ...

class TableSelection(_message.Message):
    __slots__ = ("table", "columns", "entity_name", "stage_tables")
    class StageTablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ENTITY_NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_TABLES_FIELD_NUMBER: _ClassVar[int]
    table: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    entity_name: str
    stage_tables: _containers.ScalarMap[str, str]
    def __init__(self, table: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., entity_name: _Optional[str] = ..., stage_tables: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("connection", "stage", "tables", "all_tables", "schemas", "expected_catalog_version")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    ALL_TABLES_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    connection: str
    stage: str
    tables: _containers.RepeatedCompositeFieldContainer[TableSelection]
    all_tables: bool
    schemas: _containers.RepeatedScalarFieldContainer[str]
    expected_catalog_version: int
    def __init__(self, connection: _Optional[str] = ..., stage: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[TableSelection, _Mapping]]] = ..., all_tables: _Optional[bool] = ..., schemas: _Optional[_Iterable[str]] = ..., expected_catalog_version: _Optional[int] = ...) -> None: ...

class SelectResponse(_message.Message):
    __slots__ = ("entities", "catalog_version")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    catalog_version: int
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class UnselectRequest(_message.Message):
    __slots__ = ("connection", "entities", "expected_catalog_version")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    connection: str
    entities: _containers.RepeatedScalarFieldContainer[str]
    expected_catalog_version: int
    def __init__(self, connection: _Optional[str] = ..., entities: _Optional[_Iterable[str]] = ..., expected_catalog_version: _Optional[int] = ...) -> None: ...

class UnselectResponse(_message.Message):
    __slots__ = ("catalog_version",)
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog_version: int
    def __init__(self, catalog_version: _Optional[int] = ...) -> None: ...

class ListEntitiesRequest(_message.Message):
    __slots__ = ("connection",)
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    connection: str
    def __init__(self, connection: _Optional[str] = ...) -> None: ...

class ListEntitiesResponse(_message.Message):
    __slots__ = ("entities", "catalog_version")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    catalog_version: int
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class RefreshRequest(_message.Message):
    __slots__ = ("connection", "stage")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    connection: str
    stage: str
    def __init__(self, connection: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class Drift(_message.Message):
    __slots__ = ("kind", "entity", "schema", "table", "column", "old_type", "new_type", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    OLD_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEW_TYPE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    entity: str
    schema: str
    table: str
    column: str
    old_type: str
    new_type: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., entity: _Optional[str] = ..., schema: _Optional[str] = ..., table: _Optional[str] = ..., column: _Optional[str] = ..., old_type: _Optional[str] = ..., new_type: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RefreshResponse(_message.Message):
    __slots__ = ("drift", "previous_catalog_version", "catalog_version", "entities")
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    drift: _containers.RepeatedCompositeFieldContainer[Drift]
    previous_catalog_version: int
    catalog_version: int
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, drift: _Optional[_Iterable[_Union[Drift, _Mapping]]] = ..., previous_catalog_version: _Optional[int] = ..., catalog_version: _Optional[int] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...
