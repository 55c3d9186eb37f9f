"""Vault for tests: the live server when FABRIC_TEST_VAULT_ADDR is set, and real local
HTTP peers that fail the way Vault fails (sealed, down), never a mock of hvac.

Live tests use FABRIC_TEST_VAULT_ADDR and FABRIC_TEST_VAULT_TOKEN (a dev server:
`vault server -dev -dev-root-token-id=root`). Without the address they are skipped with a
reason saying so: no Vault server can run in the default test environment.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fabric.security.vault import vault_client

NOT_RUN_REASON = (
    "live Vault test not run: set FABRIC_TEST_VAULT_ADDR (and FABRIC_TEST_VAULT_TOKEN) "
    "to a Vault server to run it"
)


def live_vault_client() -> Any:
    """An hvac client for the live test Vault, or a skip saying why there is none."""
    addr = os.environ.get("FABRIC_TEST_VAULT_ADDR")
    if not addr:
        pytest.skip(NOT_RUN_REASON)
    token = os.environ.get("FABRIC_TEST_VAULT_TOKEN", "root")
    return vault_client(addr, token, timeout=10.0)


def ensure_engine(
    client: Any, path: str, engine: str, options: dict[str, str] | None = None
) -> None:
    """Mount a secrets engine at `path` unless something is mounted there already."""
    mounted = client.sys.list_mounted_secrets_engines()
    mounts = mounted.get("data", mounted)
    if f"{path}/" not in mounts:
        client.sys.enable_secrets_engine(backend_type=engine, path=path, options=options)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class FailingVault:
    """A real HTTP server on 127.0.0.1 answering every request with one error."""

    url: str
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def failing_vault(status: int, errors: list[str]) -> Iterator[FailingVault]:
    """Serve Vault's error format (`{"errors": [...]}`) with `status` for any request."""
    peer: FailingVault

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            peer.requests.append(Recorded(self.command, self.path, body))
            payload = json.dumps({"errors": errors}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _answer

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    peer = FailingVault(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def silent_vault() -> Iterator[str]:
    """A listening socket that accepts connections and never answers (a hung Vault)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def closed_port_url() -> str:
    """The URL of a local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def live_transit_kms() -> Iterator[Any]:
    """A `VaultTransitKms` on a fresh derived transit key of the live test Vault (or a
    skip); the key is deleted afterwards."""
    from fabric.security.vault import VaultTransitKms

    client = live_vault_client()
    ensure_engine(client, "transit", "transit")
    name = unique_name("fabric-test")
    kms = VaultTransitKms(client, key_name=name, mount_point="transit", derived=True)
    kms.ensure_key()
    try:
        yield kms
    finally:
        transit = client.secrets.transit
        transit.update_key_configuration(name=name, deletion_allowed=True)
        transit.delete_key(name=name)


@contextmanager
def live_kv_store() -> Iterator[Any]:
    """A `VaultKvSecretStore` under a fresh prefix of the live test Vault's KV v2 mount
    (`secret/`), or a skip; everything under the prefix is deleted afterwards."""
    from fabric.security.vault import VaultKvSecretStore

    client = live_vault_client()
    ensure_engine(client, "secret", "kv", options={"version": "2"})
    store = VaultKvSecretStore(
        client, mount_point="secret", path_prefix=f"fabric-tests/{unique_name('run')}"
    )
    try:
        yield store
    finally:
        for ref in store.refs():
            store.delete(ref)
