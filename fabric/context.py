"""Who is asking: tenant, stage and role travel with each request, never in globals."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TENANT = "default"
DEFAULT_STAGE = "development"


class Role(StrEnum):
    APP = "app"
    DEVELOPER = "developer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The verified identity of one call. Until token verification lands (identity issue)
    the gateway builds the default one; nothing below the API layer invents its own."""

    tenant: str = DEFAULT_TENANT
    stage: str = DEFAULT_STAGE
    role: Role = Role.ADMIN
    principal: str = "local"
