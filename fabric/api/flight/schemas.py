"""Result schemas the Flight SQL door has seen, so GetSchema need not run a query again.

A query's result schema is fixed by its compiled statement: the same text compiled
against the same selection gives the same target SQL (the statement's `fingerprint`),
whose columns and types are the source's. The door remembers the schema of each
statement it has described or run as a prepared statement, by tenant, stage, connection
and fingerprint; a selection change gives a new fingerprint, and a purged connection
(deleted, changed) drops its entries. Bounded: the oldest entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

SchemaKey = tuple[str, str, str, str]
"""(tenant, stage, connection, fingerprint)."""


class ResultSchemas:
    """A bounded map from a compiled statement to its result schema (an encapsulated IPC
    schema message). Thread-safe: purges come from the engine's threads."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._schemas: OrderedDict[SchemaKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SchemaKey) -> bytes | None:
        with self._lock:
            schema = self._schemas.get(key)
            if schema is not None:
                self._schemas.move_to_end(key)
            return schema

    def put(self, key: SchemaKey, schema: bytes) -> None:
        with self._lock:
            self._schemas[key] = schema
            self._schemas.move_to_end(key)
            while len(self._schemas) > self._capacity:
                self._schemas.popitem(last=False)

    def drop_connection(self, tenant: str, connection: str) -> int:
        with self._lock:
            gone = [k for k in self._schemas if k[0] == tenant and k[2] == connection]
            for key in gone:
                del self._schemas[key]
            return len(gone)

    def __len__(self) -> int:
        return len(self._schemas)
