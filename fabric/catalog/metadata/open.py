"""Opening the metadata store a deployment asks for: PostgreSQL by URL, else a SQLite file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fabric.catalog.metadata.postgres import DEFAULT_SCHEMA, PostgresMetadataStore
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.catalog.metadata.store import MetadataStore
from fabric.errors import InvalidArgument

POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_URL_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_metadata_store(url_or_path: str | Path) -> MetadataStore:
    """The metadata store `url_or_path` names (what FABRIC_METADATA_URL holds).

    - `postgresql://user@host:5432/db` (or `postgres://`): a PostgresMetadataStore. The
      optional query parameter `schema` (default `fabric`) names the PostgreSQL schema
      for the tables and is not passed on to the server; other parameters are libpq's.
    - anything else that is not a URL: the path of a SQLite file (or `:memory:`).

    InvalidArgument for a URL of another scheme (a typo must not become a file name).
    The URL's password, if any, is never repeated in an error.
    """
    text = str(url_or_path)
    if not text:
        raise InvalidArgument("name a metadata store: a postgresql:// URL or a SQLite path")
    match = _URL_RE.match(text)
    if match is None:
        return SqliteMetadataStore(text)
    scheme = match.group(1).lower()
    if scheme not in POSTGRES_SCHEMES:
        raise InvalidArgument(
            f"metadata store URL scheme {scheme!r} is not supported; use postgresql:// "
            "or a SQLite file path"
        )
    url, schema = split_schema(text)
    return PostgresMetadataStore(url, schema=schema)


def split_schema(url: str) -> tuple[str, str]:
    """(the URL without its `schema` query parameter, that schema or the default)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    if len(schemas) > 1:
        raise InvalidArgument("the metadata store URL names more than one schema")
    schema = schemas[0] if schemas else DEFAULT_SCHEMA
    return urlunsplit(parts._replace(query=urlencode(rest))), schema
