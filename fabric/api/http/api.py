"""Every REST endpoint, and the app built from them."""

from __future__ import annotations

from starlette.applications import Starlette

from fabric.api.http import routes_admin, routes_meta, routes_platform, routes_query
from fabric.api.http.app import create_app
from fabric.api.http.endpoint import Endpoint, Services
from fabric.api.http.openapi import document

ENDPOINTS: list[Endpoint] = [
    *routes_meta.ENDPOINTS,
    *routes_platform.ENDPOINTS,
    *routes_query.ENDPOINTS,
    *routes_admin.ENDPOINTS,
]


def rest_app(services: Services) -> Starlette:
    """The REST API (its OpenAPI document included) and the portal's files."""
    app = create_app(services, ENDPOINTS)
    app.state.openapi = document(ENDPOINTS)
    return app
