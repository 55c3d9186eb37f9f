"""A gateway assembled: the engine, the platform on the same store, and the purge path
from platform changes to the engine (in-process, and on the bus once a publisher is
attached)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fabric.api.auth import local_admin_context, local_admin_of, verified_context
from fabric.api.query_service import ContextProvider, Execute
from fabric.api.server import SERVICES, Gateway
from fabric.app.parts import platform_plane, token_verifier
from fabric.app.source_access import PlatformConnectors
from fabric.catalog.manager import ConnectorFactory as InspectorFactory
from fabric.catalog.metadata.store import MetadataStore
from fabric.clock import SYSTEM_CLOCK, Clock
from fabric.config import Settings
from fabric.errors import InvalidArgument
from fabric.messaging.platform_events import Announcements, PlatformEventPublisher
from fabric.platform.departure import ChangeListeners, EnginePurger, StaleMetadataSweeper
from fabric.query.engine import QueryEngine
from fabric.query.sources import ConnectorFactory, default_connector_factory
from fabric.security.authz import StageBoundVerifier, TokenVerifierLike
from fabric.security.secrets import SecretStore
from fabric.security.signin import MAX_SESSION_LIFETIME, SignInExchange
from fabric.security.tokens import LocalKey


def assemble_gateway(
    engine: QueryEngine,
    *,
    verifier: TokenVerifierLike | None = None,
    context_provider: ContextProvider | None = None,
    secret_store: SecretStore | None = None,
    connector_builder: ConnectorFactory = default_connector_factory,
    clock: Clock = SYSTEM_CLOCK,
    execute: Execute | None = None,
    services: Collection[str] = SERVICES,
    serves_apps: bool = True,
    inspectors: InspectorFactory | None = None,
    sign_in: SignInExchange | None = None,
) -> Gateway:
    """A gateway running both planes on `engine` and its store.

    Who a call is: with a `verifier`, the verified bearer token; without one, what
    `context_provider` says (`local_admin_context` when authentication is off). One of
    the two is required. Platform changes reach the runtime through the gateway's
    `announcements`: the `purger` of `engine` first (at once, in-process), then, once
    `attach_publisher` was called, platform events on the bus. `secret_store` keeps
    connection passwords (None: passwords are refused); `connector_builder` builds the
    connectors the platform uses for discovery and tests (`inspectors`, when given,
    those for stored connections: see `fabric.app.source_access`); `clock` drives the
    stale-metadata sweeper; `execute`, `services`, `serves_apps` and `sign_in` as for
    `Gateway`.
    """
    if verifier is not None:
        context_provider = verified_context
    elif context_provider is None:
        raise InvalidArgument("a gateway needs a token verifier or a context provider")
    purger = EnginePurger(engine)
    engine.metrics.add_snapshot(purger.snapshot)
    announcements = Announcements(ChangeListeners([purger]))
    platform = platform_plane(
        engine.store,
        announcements,
        secret_store=secret_store,
        connector_builder=connector_builder,
        inspectors=inspectors,
    )
    stale_sweeper = StaleMetadataSweeper(
        engine, purger, max_age=engine.settings.metadata_stale_after, clock=clock
    )
    return Gateway(
        engine,
        platform,
        announcements,
        purger,
        stale_sweeper,
        context_provider=context_provider,
        verifier=verifier,
        execute=execute,
        services=services,
        serves_apps=serves_apps,
        sign_in=sign_in,
    )


def configured_gateway(
    settings: Settings,
    store: MetadataStore,
    *,
    secret_store: SecretStore | None = None,
    execute: Execute | None = None,
    services: Collection[str] = SERVICES,
    stage: str | None = None,
    serves_apps: bool = True,
    platform_connectors: PlatformConnectors | None = None,
    **engine_options: Any,
) -> Gateway:
    """A gateway as configured: authentication from settings (FABRIC_AUTH: with `none`,
    every call is the local administrator); with `secret_store`, connection passwords
    are kept there and the runtime reads them from it. With `stage` (a runtime replica)
    it serves that stage only: a token of another stage is refused (PERMISSION_DENIED),
    and with authentication off every call is the local administrator of `stage`.
    `serves_apps` as for `Gateway`; `platform_connectors`: how the platform reaches
    sources (default: itself); `engine_options` go to `QueryEngine`."""
    if secret_store is not None:
        engine_options.setdefault("secrets", secret_store.get)
    verifier: TokenVerifierLike | None = token_verifier(settings)
    if stage is not None and verifier is not None:
        verifier = StageBoundVerifier(verifier, stage)
    return assemble_gateway(
        QueryEngine(store, settings, **engine_options),
        verifier=verifier,
        context_provider=local_admin_context if stage is None else local_admin_of(stage),
        secret_store=secret_store,
        execute=execute,
        services=services,
        serves_apps=serves_apps,
        connector_builder=(
            default_connector_factory
            if platform_connectors is None
            else platform_connectors.builder
        ),
        inspectors=None if platform_connectors is None else platform_connectors.inspectors,
        sign_in=portal_sign_in(settings) if stage is None else None,
    )


def portal_sign_in(settings: Settings) -> SignInExchange | None:
    """The exchange of the portal's sign-in codes: with FABRIC_AUTH=local, codes and
    session tokens are signed with the local key (sessions live at most 8 hours, and
    never longer than FABRIC_JWT_MAX_LIFETIME). With another FABRIC_AUTH there is none:
    the portal signs in with a bearer token."""
    if settings.auth != "local":
        return None
    key = LocalKey.load_or_generate(settings.token_key_path)
    lifetime = min(MAX_SESSION_LIFETIME, settings.jwt_max_lifetime)
    return SignInExchange(key.secret, session_lifetime=lifetime)


def attach_publisher(gateway: Gateway, publisher: PlatformEventPublisher) -> None:
    """Announce the gateway's platform changes on the bus too (after the in-process
    purge); the publisher's counts join the gateway's metrics."""
    gateway.announcements.publisher = publisher
    gateway.engine.metrics.add_snapshot(publisher.snapshot)
