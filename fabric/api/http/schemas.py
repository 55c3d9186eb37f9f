"""The JSON Schemas of the REST API's bodies (OpenAPI 3.1 uses JSON Schema 2020-12),
named once and used by the endpoint descriptions."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY: Schema = {}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}


def obj(*, required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def map_of(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


SETTING_VALUE: Schema = {"type": ["string", "number", "boolean"]}
ERROR = obj(
    error=obj(
        code=STRING,
        message=STRING,
        position=obj(line=INTEGER, column=INTEGER, required=("line", "column")),
        required=("code", "message"),
    ),
    required=("error",),
)
KIND = obj(
    kind=STRING,
    dialect=STRING,
    description=STRING,
    settings=array(
        {
            "type": "object",
            "properties": {
                "name": STRING,
                "type": {"enum": ["string", "integer", "number", "boolean"]},
                "required": BOOLEAN,
                "secret": BOOLEAN,
                "default": ANY,
                "help": STRING,
            },
        }
    ),
)
STAGE_SHOWN = obj(stage=STRING, settings=map_of(SETTING_VALUE), has_password=BOOLEAN)
CONNECTION = obj(
    name=STRING,
    kind=STRING,
    version=INTEGER,
    catalog_version=INTEGER,
    stages=array(STAGE_SHOWN),
)
STAGE_GIVEN = obj(
    stage=STRING, settings=map_of(SETTING_VALUE), password=STRING, required=("stage",)
)
CREATE_CONNECTION = obj(
    name=STRING,
    kind=STRING,
    stages=array(STAGE_GIVEN),
    verify=BOOLEAN,
    required=("name", "kind", "stages"),
)
UPDATE_CONNECTION = obj(
    expected_version=INTEGER,
    stages=array(STAGE_GIVEN),
    remove_stages=array(STRING),
    clear_password_stages=array(STRING),
    verify=BOOLEAN,
)
PURGE_COUNTS = obj(
    stages=INTEGER,
    secrets=INTEGER,
    entities=INTEGER,
    cached_results=INTEGER,
    open_statements=INTEGER,
)
DELETED = {**PURGE_COUNTS, "properties": {**PURGE_COUNTS["properties"], "secrets_removed": INTEGER}}
TEST_RESULTS = obj(
    results=array(obj(stage=STRING, ok=BOOLEAN, code=STRING, message=STRING, elapsed_ms=NUMBER))
)
COLUMN = obj(
    name=STRING, type=STRING, arrow_type=NULLABLE_STRING, nullable=BOOLEAN, supported=BOOLEAN
)
FOREIGN_KEY = obj(
    name=STRING,
    columns=array(STRING),
    references=obj(schema=STRING, table=STRING, columns=array(STRING)),
)
TABLE = obj(
    schema=STRING,
    name=STRING,
    kind=STRING,
    columns=array(COLUMN),
    primary_key=array(STRING),
    foreign_keys=array(FOREIGN_KEY),
)
TABLE_NAME = obj(schema=STRING, name=STRING)
ENTITY = obj(
    name=STRING,
    table=TABLE_NAME,
    columns=array(COLUMN),
    selected_columns=array(STRING),
    primary_key=array(STRING),
    foreign_keys=array(FOREIGN_KEY),
    stage_tables=map_of(TABLE_NAME),
)
ENTITIES = obj(entities=array(ENTITY), catalog_version=INTEGER)
SELECT = obj(
    entity=STRING,
    schema=STRING,
    table=STRING,
    columns=array(STRING),
    stage=STRING,
    stage_tables=map_of(STRING),
    expected_catalog_version=INTEGER,
    required=("table",),
)
REFRESH_REPORT = obj(
    drift=array(
        obj(
            kind=STRING,
            entity=STRING,
            schema=STRING,
            table=STRING,
            column=STRING,
            old_type=STRING,
            new_type=STRING,
            detail=STRING,
        )
    ),
    previous_catalog_version=INTEGER,
    catalog_version=INTEGER,
    entities=array(ENTITY),
)
AUDIT_EVENT = obj(
    at=STRING,
    actor=STRING,
    action=STRING,
    connection=NULLABLE_STRING,
    stage=NULLABLE_STRING,
    details=map_of(SETTING_VALUE),
)
PARAM_VALUE: Schema = {
    "description": "null, a string, a number, a boolean, or a typed value: exactly one of "
    "decimal, date, time, timestamp (ISO 8601 text) or bytes (base64)",
    "oneOf": [
        {"type": ["null", "string", "number", "boolean"]},
        obj(
            decimal=STRING,
            date=STRING,
            time=STRING,
            timestamp=STRING,
            bytes=STRING,
        ),
    ],
}
QUERY = obj(
    connection=STRING,
    sql=STRING,
    params=map_of(PARAM_VALUE),
    cache_ttl_seconds=NUMBER,
    max_rows=INTEGER,
    required=("connection", "sql"),
)
OPEN_STATEMENT = obj(
    connection=STRING,
    sql=STRING,
    params=map_of(PARAM_VALUE),
    page_size=INTEGER,
    cache_ttl_seconds=NUMBER,
    max_rows=INTEGER,
    required=("connection", "sql"),
)
RESULT = obj(
    columns=array(obj(name=STRING, type=STRING)),
    rows=array(array(ANY)),
    row_count=INTEGER,
    truncated=BOOLEAN,
    from_cache=BOOLEAN,
    elapsed_ms=NUMBER,
)
PAGE = {
    **RESULT,
    "properties": {
        **RESULT["properties"],
        "statement_id": NULLABLE_STRING,
        "done": BOOLEAN,
    },
}
IDENTITY = obj(principal=STRING, role=STRING, tenant=STRING, stage=STRING)
SESSION = {
    **IDENTITY,
    "properties": {**IDENTITY["properties"], "token": STRING, "expires_at": STRING},
}
HISTORY = array(
    obj(
        at=STRING,
        connection=STRING,
        sql_shape=STRING,
        rows=INTEGER,
        elapsed_ms=NUMBER,
        from_cache=BOOLEAN,
        status=STRING,
    )
)
STATS = obj(
    cache_hit_ratio={"type": ["number", "null"]},
    latency_ms=obj(
        p50={"type": ["number", "null"]},
        p95={"type": ["number", "null"]},
        p99={"type": ["number", "null"]},
    ),
    purges=map_of(NUMBER),
    queries_total=NUMBER,
    queries_by_protocol=map_of(NUMBER),
)
