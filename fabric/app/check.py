"""`fabric serve --check`: the configuration is valid and what a process of a role needs
is reachable (metadata store, secret store and KMS, NATS with JetStream), then exit.

Each check runs on its own and reports ok or what failed, with what to check; none
prints a secret (settings are shown redacted, errors are the gateway's own messages).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from fabric.app.bus import close_quietly, connect_bus, nats_where, open_event_log
from fabric.app.parts import open_kms, open_secret_store, open_store
from fabric.app.process_role import ProcessRole
from fabric.app.processes import check_listen
from fabric.config import Settings
from fabric.errors import FabricError, InvalidArgument


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _run(name: str, probe: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, probe())
    except FabricError as error:
        return CheckResult(name, False, f"{error.message} ({error.code})")
    except OSError as error:
        return CheckResult(name, False, f"{error.strerror or type(error).__name__}")


def _tls(settings: Settings) -> str:
    if not settings.tls:
        return "off"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(settings.tls_client_ca)
    except ssl.SSLError:
        raise InvalidArgument(
            "FABRIC_TLS_CERT / FABRIC_TLS_KEY / FABRIC_TLS_CLIENT_CA are not a PEM "
            "certificate chain, its key and a CA bundle"
        ) from None
    return "mutual TLS" if settings.tls_client_ca else "on"


def _metadata(settings: Settings) -> str:
    store = open_store(settings)
    try:
        return f"schema version {store.schema_version()}"
    finally:
        store.close()


def _secrets(settings: Settings) -> str:
    count = len(open_secret_store(settings).refs())
    where = f"Vault at {settings.vault_addr}" if settings.vault_addr else "the sealed local file"
    return f"{where}, {count} secrets"


def _kms(settings: Settings) -> str:
    kms = open_kms(settings)
    return f"key {kms.key_id}, version {kms.current_version}"


async def _nats(settings: Settings) -> str:
    bus = await connect_bus(settings, "fabric-check")
    try:
        await open_event_log(bus, settings)
    finally:
        await close_quietly(bus)
    return f"{nats_where(settings)}, JetStream ready"


def run_checks(
    settings: Settings, role: ProcessRole, listen: str | None, *, insecure: bool
) -> list[CheckResult]:
    """Every check that applies to `role`, in order."""
    address = listen or settings.listen

    def listen_address() -> str:
        check_listen(address, settings, insecure=insecure)
        return address

    results = [
        _run("listen address", listen_address),
        _run("TLS", lambda: _tls(settings)),
        _run("metadata store", lambda: _metadata(settings)),
        _run("secret store", lambda: _secrets(settings)),
        _run("key management", lambda: _kms(settings)),
    ]
    if role is not ProcessRole.ALL or settings.nats_servers:
        results.append(_run("NATS", lambda: asyncio.run(_nats(settings))))
    return results
