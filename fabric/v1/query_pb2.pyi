from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("null_value", "bool_value", "int_value", "double_value", "string_value", "bytes_value", "decimal_value", "date_value", "time_value", "timestamp_value")
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    DATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    null_value: bool
    bool_value: bool
    int_value: int
    double_value: float
    string_value: str
    bytes_value: bytes
    decimal_value: str
    date_value: str
    time_value: str
    timestamp_value: str
    def __init__(self, null_value: _Optional[bool] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ..., decimal_value: _Optional[str] = ..., date_value: _Optional[str] = ..., time_value: _Optional[str] = ..., timestamp_value: _Optional[str] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("connection", "sql", "params", "cache_ttl_seconds", "max_rows", "max_bytes")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    connection: str
    sql: str
    params: _containers.MessageMap[str, Value]
    cache_ttl_seconds: int
    max_rows: int
    max_bytes: int
    def __init__(self, connection: _Optional[str] = ..., sql: _Optional[str] = ..., params: _Optional[_Mapping[str, Value]] = ..., cache_ttl_seconds: _Optional[int] = ..., max_rows: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class ResultSummary(_message.Message):
    __slots__ = ("rows", "truncated", "from_cache", "elapsed_us")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_US_FIELD_NUMBER: _ClassVar[int]
    rows: int
    truncated: bool
    from_cache: bool
    elapsed_us: int
    def __init__(self, rows: _Optional[int] = ..., truncated: _Optional[bool] = ..., from_cache: _Optional[bool] = ..., elapsed_us: _Optional[int] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("arrow_ipc", "summary")
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    arrow_ipc: bytes
    summary: ResultSummary
    def __init__(self, arrow_ipc: _Optional[bytes] = ..., summary: _Optional[_Union[ResultSummary, _Mapping]] = ...) -> None: ...

class OpenStatementRequest(_message.Message):
    __slots__ = ("query", "page_rows")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_ROWS_FIELD_NUMBER: _ClassVar[int]
    query: ExecuteRequest
    page_rows: int
    def __init__(self, query: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., page_rows: _Optional[int] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("statement_id", "arrow_ipc", "rows", "done", "summary")
    STATEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    statement_id: str
    arrow_ipc: bytes
    rows: int
    done: bool
    summary: ResultSummary
    def __init__(self, statement_id: _Optional[str] = ..., arrow_ipc: _Optional[bytes] = ..., rows: _Optional[int] = ..., done: _Optional[bool] = ..., summary: _Optional[_Union[ResultSummary, _Mapping]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("statement_id", "page_rows")
    STATEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_ROWS_FIELD_NUMBER: _ClassVar[int]
    statement_id: str
    page_rows: int
    def __init__(self, statement_id: _Optional[str] = ..., page_rows: _Optional[int] = ...) -> None: ...

class CloseStatementRequest(_message.Message):
    __slots__ = ("statement_id",)
    STATEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    statement_id: str
    def __init__(self, statement_id: _Optional[str] = ...) -> None: ...

class CloseStatementResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PreviewRequest(_message.Message):
    __slots__ = ("connection", "entity", "limit")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    connection: str
    entity: str
    limit: int
    def __init__(self, connection: _Optional[str] = ..., entity: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("query", "analyze")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ANALYZE_FIELD_NUMBER: _ClassVar[int]
    query: ExecuteRequest
    analyze: bool
    def __init__(self, query: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., analyze: _Optional[bool] = ...) -> None: ...

class ExplainPart(_message.Message):
    __slots__ = ("name", "connection", "sql", "accepted", "remaining", "rows", "bytes", "dynamic_filter")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_FILTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    connection: str
    sql: str
    accepted: _containers.RepeatedScalarFieldContainer[str]
    remaining: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    bytes: int
    dynamic_filter: str
    def __init__(self, name: _Optional[str] = ..., connection: _Optional[str] = ..., sql: _Optional[str] = ..., accepted: _Optional[_Iterable[str]] = ..., remaining: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., bytes: _Optional[int] = ..., dynamic_filter: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("federated", "analyzed", "parts")
    FEDERATED_FIELD_NUMBER: _ClassVar[int]
    ANALYZED_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    federated: bool
    analyzed: bool
    parts: _containers.RepeatedCompositeFieldContainer[ExplainPart]
    def __init__(self, federated: _Optional[bool] = ..., analyzed: _Optional[bool] = ..., parts: _Optional[_Iterable[_Union[ExplainPart, _Mapping]]] = ...) -> None: ...
