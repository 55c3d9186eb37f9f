from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunningQuery(_message.Message):
    __slots__ = ("id", "request_id", "tenant", "stage", "principal", "connection", "sql_shape", "fingerprint", "protocol", "kind", "phase", "started_at", "elapsed_seconds", "rows", "replica")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SQL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    tenant: str
    stage: str
    principal: str
    connection: str
    sql_shape: str
    fingerprint: str
    protocol: str
    kind: str
    phase: str
    started_at: float
    elapsed_seconds: float
    rows: int
    replica: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., stage: _Optional[str] = ..., principal: _Optional[str] = ..., connection: _Optional[str] = ..., sql_shape: _Optional[str] = ..., fingerprint: _Optional[str] = ..., protocol: _Optional[str] = ..., kind: _Optional[str] = ..., phase: _Optional[str] = ..., started_at: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., rows: _Optional[int] = ..., replica: _Optional[str] = ...) -> None: ...

class ListRunningQueriesRequest(_message.Message):
    __slots__ = ("stage",)
    STAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    def __init__(self, stage: _Optional[str] = ...) -> None: ...

class ListRunningQueriesResponse(_message.Message):
    __slots__ = ("queries", "replicas", "truncated")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[RunningQuery]
    replicas: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    def __init__(self, queries: _Optional[_Iterable[_Union[RunningQuery, _Mapping]]] = ..., replicas: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CancelQueryRequest(_message.Message):
    __slots__ = ("id", "stage")
    ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    stage: str
    def __init__(self, id: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class CancelQueryResponse(_message.Message):
    __slots__ = ("replica",)
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    replica: str
    def __init__(self, replica: _Optional[str] = ...) -> None: ...
