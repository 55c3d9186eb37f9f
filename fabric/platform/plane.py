"""The platform plane of one process: catalog manager, connection admin, change listener."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.catalog.manager import CatalogManager
from fabric.platform.connections import ConnectionAdmin
from fabric.platform.departure import ChangeListener


@dataclass(frozen=True, slots=True)
class Platform:
    """What the platform servicers work with (`fabric.app.parts.platform_plane` builds
    it)."""

    manager: CatalogManager
    connections: ConnectionAdmin
    listener: ChangeListener
