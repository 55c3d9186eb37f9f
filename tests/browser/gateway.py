"""A gateway in this process with its HTTP door on a free port: real metadata store,
sealed secret store, local-key tokens, and sign-in codes exchanged for sessions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.query.engine import QueryEngine
from fabric.security.kms import LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore
from fabric.security.signin import SignInExchange
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier


@contextmanager
def portal_gateway(home: Path) -> Iterator[tuple[str, TokenConfig, bytes]]:
    """The portal's base URL, the token configuration its verifier accepts, and the local
    key's secret (which signs sign-in codes)."""
    key = LocalKey.generate(home / "token.key")
    tokens = TokenConfig.for_local_key(key)
    store = SqliteMetadataStore(home / "metadata.sqlite")
    secrets = SealedFileSecretStore(
        home / "secrets.sealed", LocalKeyRing.open(home / "keyring.json")
    )
    engine = QueryEngine(store, Settings(home=home, metrics_port=0), secrets=secrets.get)
    gateway = BackgroundGateway(
        assemble_gateway(
            engine,
            verifier=TokenVerifier(tokens),
            secret_store=secrets,
            sign_in=SignInExchange(key.secret),
        ),
        http_address="127.0.0.1:0",
    ).start()
    try:
        yield gateway.http_url, tokens, key.secret
    finally:
        gateway.stop()
        store.close()
