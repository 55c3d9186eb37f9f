"""Who is asking: tenant, stage and role travel with each request, never in globals."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TENANT = "default"
"""The tenant of the embedded default (and of a local token unless told otherwise)."""
DEFAULT_STAGE = "development"
"""The stage of the embedded default (and of a local token unless told otherwise)."""


class Role(StrEnum):
    APP = "app"
    DEVELOPER = "developer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The verified identity of one call: built from a verified token's claims, or, with
    authentication off, as the local administrator (`fabric.api.auth.LOCAL_ADMIN`).
    Every field is given explicitly: there is no identity by default, so a context
    nobody filled in cannot exist, let alone be the most powerful one."""

    tenant: str
    stage: str
    role: Role
    principal: str
