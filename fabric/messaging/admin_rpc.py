"""Running queries across the replicas of a stage, over the bus: the platform asks every
runtime replica for its list and merges the answers, and sends a cancellation to the one
replica that runs the query (its id names it, `fabric.query.running`).

Subjects (`<t>` tenant, `<s>` stage, all built with `subject_for`)::

    fabric.<t>.<s>.admin                 LIST, to every replica of the stage (no queue
                                         group: each one answers); replicas subscribe
                                         `fabric.*.<s>.admin`
    fabric.<t>.<s>.admin.<replica>       CANCEL, request/reply, to one replica
    fabric.<t>.<s>.adminreply.<inbox>    the answers to one LIST

Every payload is sealed (`BusSealer`, purposes `admin-request` and `admin-reply`, bound to
the tenant, the stage and the exact subject), so a request for one tenant cannot be
answered with, or turned into, another tenant's. A request carries its send time and is
refused past `MAX_REQUEST_AGE` seconds. The answers hold metadata only (the SQL's shape
with its literals masked), never a value.

A LIST cannot know how many replicas a stage has: its answers are gathered for `window`
seconds (a replica answers from memory, in milliseconds), and the replicas that answered
are named with the result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict
from typing import Any

from fabric.errors import FabricError, InvalidArgument, NotFound, SourceUnavailable
from fabric.messaging.bus import (
    EVENTS_TOKEN,
    SUBJECT_ROOT,
    Bus,
    Message,
    Subscription,
    subject_for,
    subject_token,
)
from fabric.messaging.sealing import BusSealer, Purpose, RejectReason
from fabric.query.running import QueryList, RunningQueryView, replica_of

__all__ = [
    "DEFAULT_WINDOW",
    "AdminResponder",
    "RunningQueriesClient",
    "StageQueries",
]

log = logging.getLogger(__name__)

ADMIN_KIND = "admin"
ADMIN_REPLY_KIND = "adminreply"
DEFAULT_WINDOW = 0.5
"""Seconds a LIST gathers the replicas' answers."""
CANCEL_TIMEOUT = 5.0
MAX_REQUEST_AGE = 30.0
_FIELDS = frozenset(RunningQueryView.__dataclass_fields__)


class StageQueries:
    """What a LIST gathered: the queries, oldest first, the replicas that answered, and
    whether a replica listed only its oldest (more than one message holds)."""

    def __init__(
        self, queries: list[RunningQueryView], replicas: list[str], truncated: bool = False
    ) -> None:
        self.queries = queries
        self.replicas = replicas
        self.truncated = truncated


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise InvalidArgument("an admin message is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("an admin message is not a JSON object")
    return value


def _view(value: Any) -> RunningQueryView:
    if not isinstance(value, dict) or set(value) != _FIELDS:
        raise InvalidArgument("a running query in an admin reply has unexpected fields")
    return RunningQueryView(**value)


class AdminResponder:
    """A runtime replica's side: answers LIST with its engine's queries of the tenant and
    stage, and CANCEL for a query it runs."""

    def __init__(self, bus: Bus, queries: QueryList, sealer: BusSealer, *, stage: str) -> None:
        self.bus = bus
        self.queries = queries
        self.sealer = sealer
        self.stage = subject_token(stage, "stage")
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        replica = subject_token(self.queries.replica, "replica id")
        for subject in (
            f"{SUBJECT_ROOT}.*.{self.stage}.{ADMIN_KIND}",
            f"{SUBJECT_ROOT}.*.{self.stage}.{ADMIN_KIND}.{replica}",
        ):
            self._subscriptions.append(await self.bus.subscribe(subject, self._on_request))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    def _tenant_of(self, subject: str) -> str | None:
        tokens = subject.split(".")
        if len(tokens) < 4 or tokens[2] != self.stage or tokens[1] == EVENTS_TOKEN:
            return None
        return tokens[1]

    async def _on_request(self, msg: Message) -> None:
        tenant = self._tenant_of(msg.subject)
        if tenant is None:
            self.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return
        try:
            request = _decode(
                self.sealer.open(
                    msg.payload,
                    tenant=tenant,
                    stage=self.stage,
                    subject=msg.subject,
                    purpose=Purpose.ADMIN_REQUEST,
                )
            )
        except InvalidArgument as error:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            return
        except FabricError:
            return  # counted and logged (without content) by the sealer
        sent_at = request.get("sent_at")
        if not isinstance(sent_at, int | float) or abs(time.time() - sent_at) > MAX_REQUEST_AGE:
            self.sealer.reject(RejectReason.EXPIRED, msg.subject, len(msg.payload))
            return
        op = request.get("op")
        if op == "list" and isinstance(request.get("reply"), str):
            await self._answer_list(tenant, request["reply"])
        elif op == "cancel" and isinstance(request.get("id"), str) and msg.reply_subject:
            await self._answer_cancel(tenant, request["id"], msg)
        else:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload))

    async def _answer_list(self, tenant: str, reply: str) -> None:
        tokens = reply.split(".")
        if len(tokens) != 5 or tokens[1] != tenant or tokens[3] != ADMIN_REPLY_KIND:
            self.sealer.reject(RejectReason.MALFORMED, reply, 0)
            return
        listed = [asdict(view) for view in self.queries.list(tenant, self.stage)]
        truncated = False
        while True:
            body = _encode(
                {"replica": self.queries.replica, "queries": listed, "truncated": truncated}
            )
            sealed = self.sealer.seal(
                body, tenant=tenant, stage=self.stage, subject=reply, purpose=Purpose.ADMIN_REPLY
            )
            if len(sealed) <= self.bus.max_payload or not listed:
                break
            # More than one message holds: the oldest half that fits (oldest first).
            listed, truncated = listed[: len(listed) // 2], True
        try:
            await self.bus.publish(reply, sealed)
        except FabricError as error:  # the asker is gone, or the list is too long
            log.warning("could not answer a running-queries list: %s", error.code)

    async def _answer_cancel(self, tenant: str, query_id: str, msg: Message) -> None:
        cancelled = self.queries.cancel(query_id, tenant)
        body = _encode({"replica": self.queries.replica, "cancelled": cancelled})
        assert msg.reply_subject is not None
        sealed = self.sealer.seal(
            body,
            tenant=tenant,
            stage=self.stage,
            subject=msg.subject,
            purpose=Purpose.ADMIN_REPLY,
        )
        await msg.respond(sealed)


class RunningQueriesClient:
    """The platform's side: LIST gathered from every replica of a stage, CANCEL sent to
    the replica that runs the query."""

    def __init__(self, bus: Bus, sealer: BusSealer, *, window: float = DEFAULT_WINDOW) -> None:
        if window <= 0:
            raise InvalidArgument("the gathering window must be positive")
        self.bus = bus
        self.sealer = sealer
        self.window = window

    def _seal_request(self, body: dict[str, Any], tenant: str, stage: str, subject: str) -> bytes:
        return self.sealer.seal(
            _encode({**body, "sent_at": time.time()}),
            tenant=tenant,
            stage=stage,
            subject=subject,
            purpose=Purpose.ADMIN_REQUEST,
        )

    async def list(self, tenant: str, stage: str) -> StageQueries:
        reply = subject_for(ADMIN_REPLY_KIND, tenant, stage, uuid.uuid4().hex)
        answers: list[dict[str, Any]] = []

        async def gather(msg: Message) -> None:
            try:
                answers.append(
                    _decode(
                        self.sealer.open(
                            msg.payload,
                            tenant=tenant,
                            stage=stage,
                            subject=msg.subject,
                            purpose=Purpose.ADMIN_REPLY,
                        )
                    )
                )
            except InvalidArgument as error:
                self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            except FabricError:
                pass  # counted and logged (without content) by the sealer

        subscription = await self.bus.subscribe(reply, gather)
        try:
            subject = subject_for(ADMIN_KIND, tenant, stage)
            await self.bus.publish(
                subject, self._seal_request({"op": "list", "reply": reply}, tenant, stage, subject)
            )
            await asyncio.sleep(self.window)  # the gathering window (see the docstring)
        finally:
            await subscription.unsubscribe()
        queries: list[RunningQueryView] = []
        replicas: list[str] = []
        truncated = False
        for answer in answers:
            try:
                views = [_view(value) for value in answer.get("queries", [])]
            except (InvalidArgument, TypeError):
                log.warning("a replica's running-queries answer was malformed; left out")
                continue
            replicas.append(str(answer.get("replica", "")))
            truncated = truncated or answer.get("truncated") is True
            # A replica answers only for the tenant and stage asked (the seal binds them).
            queries.extend(v for v in views if v.tenant == tenant and v.stage == stage)
        queries.sort(key=lambda view: view.started_at)
        return StageQueries(queries, sorted(replicas), truncated)

    async def cancel(self, tenant: str, stage: str, query_id: str) -> str:
        """Cancel the query on its replica; the replica's id. NotFound when no replica of
        the stage runs it (ended, another tenant's, or its replica is gone)."""
        replica = replica_of(query_id)
        if replica is None:
            raise InvalidArgument(
                f"{query_id!r} is not a running query's id (<replica>:<16 hex digits>); "
                "take it from `fabric queries list`"
            )
        subject = subject_for(ADMIN_KIND, tenant, stage, replica)
        payload = self._seal_request({"op": "cancel", "id": query_id}, tenant, stage, subject)
        try:
            sealed = await self.bus.request(subject, payload, timeout=CANCEL_TIMEOUT)
        except SourceUnavailable:
            raise NotFound(
                f"no replica {replica!r} of stage {stage!r} answers: the query is not running"
            ) from None
        answer = _decode(
            self.sealer.open(
                sealed, tenant=tenant, stage=stage, subject=subject, purpose=Purpose.ADMIN_REPLY
            )
        )
        if answer.get("cancelled") is not True:
            raise NotFound(f"query {query_id!r} is not running in stage {stage!r}")
        return replica
