"""Connections with their secrets: create, update, delete and test, passwords write-only.

A password is accepted on create and update, written to the secret store under a
reference the connection keeps (`secret_refs`), and never returned, stored in the
metadata store, put in an error or logged (`StageInput` keeps it out of its repr).

Each operation either happens whole or leaves nothing changed:

- create checks the input and the name first, optionally tests every stage with the
  given settings and passwords before anything is written (`verify`), writes the record,
  then the secrets (a failed secret write removes the record again);
- update writes a new password under a new reference, then moves the record to it with
  a compare-and-set on the version; if that fails the new secret is removed and the old
  one still serves; if it succeeds the old one is removed;
- delete removes the record (and its selection), then its secrets, then tells the
  runtime (`ChangeListener.connection_deleted`), which purges everything held in memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from connectors import registry
from fabric.catalog import audit
from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent
from fabric.catalog.manager import CatalogManager
from fabric.catalog.serialization import (
    check_connection_name,
    check_kind,
    looks_like_secret,
    stages_document,
    utc_now,
)
from fabric.errors import (
    AlreadyExists,
    FabricError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from fabric.model import ALL_STAGES, Connection, SettingValue
from fabric.platform.departure import ChangeListener
from fabric.query.sources import ConnectorFactory, default_connector_factory
from fabric.security.secrets import SecretStore

log = logging.getLogger(__name__)

STAGE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A stage an operator names: letters, digits, '.', '_' and '-' (or `*` for all stages)."""

CONNECTION_TEST: Final = "connection.test"
_UPDATE_ATTEMPTS: Final = 5


@dataclass(frozen=True, slots=True)
class StageInput:
    """One stage's configuration as a caller gives it: settings, and an optional password
    (never shown in repr, so never in a log or traceback)."""

    settings: Mapping[str, SettingValue]
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeleteReport:
    """What a delete removed at rest."""

    secrets_removed: int


def secret_ref(tenant: str, connection: str, stage: str) -> str:
    """Where a connection's password for a stage lives in the secret store."""
    stage_part = "all" if stage == ALL_STAGES else stage
    return f"connections/{tenant}/{connection}/{stage_part}"


def check_stage(stage: str) -> str:
    """`stage` if it is `*` or a valid stage name; InvalidArgument otherwise."""
    if stage == ALL_STAGES:
        return stage
    if not isinstance(stage, str) or STAGE_NAME_RE.fullmatch(stage) is None:
        raise InvalidArgument(
            f"stage name {stage!r} is not valid: use 1 to 128 letters, digits, '.', '_' or "
            "'-' (or '*' for settings that apply to every stage)"
        )
    return stage


def _check_password(stage: str, password: str | None) -> None:
    if password is not None and (not isinstance(password, str) or not password):
        # The value is never echoed, even when it is wrong.
        raise InvalidArgument(f"the password of stage {stage!r} must be a non-empty string")


def _declared_settings(kind: str, stages: Mapping[str, StageInput]) -> dict[str, StageInput]:
    """`stages` with each setting checked against those `kind` declares and converted to
    its type: a misspelled key is refused (naming the nearest declared one) rather than
    stored and silently ignored by the connector."""
    spec = registry.get(kind)
    checked: dict[str, StageInput] = {}
    for stage, given in stages.items():
        # A key that looks like a secret is left for `stages_document`, whose refusal
        # says where secrets go.
        plain = {k: v for k, v in given.settings.items() if not looks_like_secret(k)}
        secret_looking = {k: v for k, v in given.settings.items() if looks_like_secret(k)}
        settings = {**spec.check_settings(plain, complete=False), **secret_looking}
        checked[stage] = StageInput(settings, given.password)
    return checked


class ConnectionAdmin:
    """Connection administration on top of the catalog manager and the secret store;
    every committed change is announced to `listener`."""

    def __init__(
        self,
        manager: CatalogManager,
        secrets: SecretStore | None,
        listener: ChangeListener,
        *,
        connector_builder: ConnectorFactory = default_connector_factory,
    ) -> None:
        self._manager = manager
        self._secrets = secrets
        self._listener = listener
        self._builder = connector_builder

    @property
    def manager(self) -> CatalogManager:
        return self._manager

    # -- create ----------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        name: str,
        kind: str,
        stages: Mapping[str, StageInput],
        *,
        verify: bool = False,
        actor: str = SYSTEM_ACTOR,
    ) -> Connection:
        """Register a connection with one configuration per stage (`*`: all stages).

        InvalidArgument (unknown kind, no stage, bad names, secret-looking settings),
        AlreadyExists (the name is taken), FailedPrecondition (a password but no secret
        store); with `verify`, the connector's error for a stage that does not work
        (SourceUnavailable: unreachable host, wrong password, missing database). Nothing
        is written unless everything succeeds.
        """
        check_connection_name(name)
        kind_value = check_kind(kind)
        if not stages:
            raise InvalidArgument(
                "a connection needs a configuration for at least one stage (or '*' for all)"
            )
        stages = _declared_settings(kind_value, stages)
        for stage, given in stages.items():
            check_stage(stage)
            _check_password(stage, given.password)
        plain = stages_document({stage: given.settings for stage, given in stages.items()})
        passwords = {s: g.password for s, g in stages.items() if g.password is not None}
        if passwords:
            self._require_secret_store()
        if self._exists(tenant, name):
            raise AlreadyExists(f"connection {name!r} already exists in tenant {tenant!r}")
        refs = {stage: secret_ref(tenant, name, stage) for stage in passwords}
        if verify:
            draft = Connection(
                tenant, name, kind_value, MappingProxyType(plain), MappingProxyType(refs)
            )
            for stage in sorted(plain):
                try:
                    self._test_draft(draft, stage, passwords.get(stage))
                except FabricError as error:
                    raise type(error)(
                        f"{error.message}. Connection {name!r} was not stored (stage "
                        f"{stage!r} was tested first)",
                        sqlstate=error.sqlstate,
                    ) from None
        connection = self._manager.create_connection(
            tenant, name, kind_value, plain, refs or None, actor=actor
        )
        written: list[str] = []
        try:
            for stage, ref in refs.items():
                self._put(ref, passwords[stage])
                written.append(ref)
        except BaseException:
            self._manager.delete_connection(tenant, name, actor=actor)
            self._delete_refs(written)
            raise
        return connection

    # -- read ------------------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> Connection:
        return self._manager.get_connection(tenant, name)

    def list(self, tenant: str) -> list[Connection]:
        return self._manager.list_connections(tenant)

    # -- update ----------------------------------------------------------------------------

    def update(
        self,
        tenant: str,
        name: str,
        *,
        stages: Mapping[str, StageInput] | None = None,
        remove_stages: Sequence[str] = (),
        clear_passwords: Sequence[str] = (),
        expected_version: int | None = None,
        verify: bool = False,
        actor: str = SYSTEM_ACTOR,
    ) -> Connection:
        """Change a connection's stages and passwords.

        Each entry of `stages` sets that stage's settings (an entry with no settings and a
        password changes only the password of an existing stage) and, when it carries
        one, its password; a stage without a new password keeps its old one.
        `remove_stages` drops stages (with their passwords), `clear_passwords` drops
        only the passwords. With `expected_version` the update applies only to that
        version (FailedPrecondition otherwise); without it, the current version is read
        and a concurrent change makes the update retry on top of it. With `verify`,
        every changed stage is tested first. Nothing changes unless all of it succeeds.
        """
        stages = dict(stages or {})
        if stages:
            stages = _declared_settings(self._manager.get_connection(tenant, name).kind, stages)
        for stage, given in stages.items():
            check_stage(stage)
            _check_password(stage, given.password)
        for stage in [*remove_stages, *clear_passwords]:
            check_stage(stage)
        both = set(stages) & set(remove_stages)
        if both:
            raise InvalidArgument(
                f"stage(s) {sorted(both)} are both set and removed; do one or the other"
            )
        if not stages and not remove_stages and not clear_passwords:
            raise InvalidArgument("nothing to update: give stages to set or remove")
        if any(given.password is not None for given in stages.values()):
            self._require_secret_store()
        attempts = 1 if expected_version is not None else _UPDATE_ATTEMPTS
        for attempt in range(attempts):
            current = self._manager.get_connection(tenant, name)
            version = current.version if expected_version is None else expected_version
            try:
                updated = self._update_once(
                    current, version, stages, remove_stages, clear_passwords, verify, actor
                )
            except VersionConflict:
                if attempt == attempts - 1:
                    self._record_conflict(tenant, name, actor, audit.CONNECTION_UPDATE)
                    raise
                continue
            self._listener.connection_changed(tenant, name)
            return updated
        raise AssertionError("unreachable")

    def _update_once(
        self,
        current: Connection,
        version: int,
        stages: Mapping[str, StageInput],
        remove_stages: Sequence[str],
        clear_passwords: Sequence[str],
        verify: bool,
        actor: str,
    ) -> Connection:
        tenant, name = current.tenant, current.name
        missing = sorted(s for s in [*remove_stages, *clear_passwords] if s not in current.stages)
        new_stages = {s: dict(v) for s, v in current.stages.items()}
        for stage, given in stages.items():
            if given.settings or stage not in current.stages:
                new_stages[stage] = dict(given.settings)
            if not given.settings and given.password is None:
                raise InvalidArgument(f"stage {stage!r} is given neither settings nor a password")
        if missing:
            configured = ", ".join(sorted(current.stages)) or "none"
            raise NotFound(
                f"connection {name!r} has no stage {', '.join(map(repr, missing))} "
                f"(configured: {configured})"
            )
        for stage in remove_stages:
            new_stages.pop(stage, None)
        plain = stages_document(new_stages)  # refuses an empty result, secret-looking keys
        new_refs = dict(current.secret_refs)
        for stage in [*remove_stages, *clear_passwords]:
            new_refs.pop(stage, None)
        passwords = {s: g.password for s, g in stages.items() if g.password is not None}
        for stage in passwords:
            # A new reference per version: the old password keeps serving until the record
            # points at the new one, and a failed update leaves it untouched.
            new_refs[stage] = f"{secret_ref(tenant, name, stage)}-v{version + 1}"
        if verify:
            draft = Connection(
                tenant,
                name,
                current.kind,
                MappingProxyType(plain),
                MappingProxyType(new_refs),
                version,
            )
            for stage in sorted(set(stages) | set(clear_passwords)):
                if stage in plain:
                    self._test_draft(draft, stage, passwords.get(stage))
        written: list[str] = []
        try:
            for stage, password in passwords.items():
                self._put(new_refs[stage], password)
                written.append(new_refs[stage])
            updated = self._manager.update_connection(
                tenant,
                name,
                stages=plain,
                secret_refs=new_refs,
                expected_version=version,
                actor=actor,
            )
        except BaseException:
            self._delete_refs(written)
            raise
        still_used = set(new_refs.values())
        self._delete_refs(
            [r for r in set(current.secret_refs.values()) if r not in still_used], quiet=True
        )
        return updated

    # -- delete ----------------------------------------------------------------------------

    def delete(
        self,
        tenant: str,
        name: str,
        *,
        expected_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> DeleteReport:
        """Delete the connection, its selection and its secrets, and purge the runtime.

        NotFound if absent, FailedPrecondition if not at `expected_version`. If a secret
        cannot be removed (the secret store is down), the runtime is purged all the same
        and the secret store's error is raised after.
        """
        current = self._manager.get_connection(tenant, name)
        try:
            self._manager.delete_connection(
                tenant, name, expected_version=expected_version, actor=actor
            )
        except VersionConflict:
            self._record_conflict(tenant, name, actor, audit.CONNECTION_DELETE)
            raise
        refs = sorted(set(current.secret_refs.values()))
        try:
            self._delete_refs(refs)
        finally:
            self._listener.connection_deleted(tenant, name)
        return DeleteReport(secrets_removed=len(refs))

    # -- test ------------------------------------------------------------------------------

    def test(self, tenant: str, name: str, stage: str, *, actor: str = SYSTEM_ACTOR) -> None:
        """Open a real connection in `stage` and run a trivial query; the connector's
        error (value-free) when that fails. The attempt and its outcome are audited."""
        check_stage(stage)
        outcome = "ok"
        try:
            self._manager.test_connection(tenant, name, stage)
        except FabricError as error:
            outcome = error.code
            if isinstance(error, NotFound) and not self._exists(tenant, name):
                raise  # nothing to audit about a connection that does not exist
            self._audit_test(tenant, name, stage, actor, outcome)
            raise
        self._audit_test(tenant, name, stage, actor, outcome)

    # -- internals -------------------------------------------------------------------------

    def _record_conflict(self, tenant: str, name: str, actor: str, action: str) -> None:
        """Record a change refused for a version conflict (the change was rolled back)."""
        self._manager.store.record_audit(
            audit.refused(utc_now(), tenant, actor, action, "version_conflict", connection=name)
        )

    def _audit_test(self, tenant: str, name: str, stage: str, actor: str, outcome: str) -> None:
        self._manager.store.record_audit(
            AuditEvent(
                at=utc_now(),
                tenant=tenant,
                actor=actor,
                action=CONNECTION_TEST,
                connection=name,
                stage=stage,
                details={"outcome": outcome},
            )
        )

    def _exists(self, tenant: str, name: str) -> bool:
        try:
            self._manager.get_connection(tenant, name)
        except NotFound:
            return False
        return True

    def _require_secret_store(self) -> SecretStore:
        if self._secrets is None:
            raise FailedPrecondition(
                "this gateway has no secret store, so it cannot keep a password; configure "
                "one (the sealed local file or Vault) or use the source's own trust"
            )
        return self._secrets

    def _put(self, ref: str, password: str) -> None:
        self._require_secret_store().put(ref, password)

    def _delete_refs(self, refs: Iterable[str], *, quiet: bool = False) -> None:
        if self._secrets is None:
            return
        first: BaseException | None = None
        for ref in refs:
            try:
                self._secrets.delete(ref)
            except Exception as error:
                log.warning("could not remove secret %s: %s", ref, type(error).__name__)
                first = first or error
        if first is not None and not quiet:
            raise first

    def _test_draft(self, draft: Connection, stage: str, password: str | None) -> None:
        """Test `stage` of a connection not yet written, with the given password or the
        stored one of the stage."""
        settings = draft.settings_for(stage)
        if settings is None:
            raise FailedPrecondition(f"connection {draft.name!r} has no settings for {stage!r}")
        if password is None:
            ref = draft.secret_ref_for(stage)
            if ref is not None and self._secrets is not None:
                try:
                    password = self._secrets.get(ref)
                except NotFound:
                    password = None
        connector = self._builder(draft, settings, password)
        try:
            connector.test()
        finally:
            connector.close()
