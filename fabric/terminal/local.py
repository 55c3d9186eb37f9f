"""`--local`: the administration commands against FABRIC_HOME's own stores, with no
gateway running. A private gateway is started in this process for the one command, on
a unix socket in a directory only this user can open, and the command talks to it
through the same client as to a real gateway: one code path, local or remote."""

from __future__ import annotations

import contextlib
import getpass
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import open_secret_store, open_store
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.context import RequestContext, Role
from fabric.query.engine import QueryEngine

__all__ = ["local_actor", "local_client"]


def local_actor() -> str:
    """Who the audit names for a local command: the operating-system user."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "local"


@contextlib.contextmanager
def local_client(
    settings: Settings, tenant: str, stage: str, timeout: float | None = None
) -> Iterator[FabricClient]:
    """A client of a private gateway over FABRIC_HOME's stores (or FABRIC_METADATA_URL's,
    and Vault when configured), acting as the administrator `local_actor()`."""
    caller = RequestContext(tenant=tenant, stage=stage, role=Role.ADMIN, principal=local_actor())

    def context_provider(_: grpc.aio.ServicerContext) -> RequestContext:
        return caller

    store = open_store(settings)
    try:
        secrets = open_secret_store(settings)
        engine = QueryEngine(store, settings, secrets=secrets.get)
        gateway = assemble_gateway(engine, context_provider=context_provider, secret_store=secrets)
        with tempfile.TemporaryDirectory(prefix="fabric-local-") as directory:
            socket = Path(directory) / "gateway.sock"
            with (
                BackgroundGateway(gateway, f"unix:{socket}") as background,
                FabricClient(background.address, timeout=timeout) as client,
            ):
                yield client
    finally:
        store.close()
