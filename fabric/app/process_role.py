"""The roles `fabric serve` runs a process in, kept apart from `fabric.app.processes` so
the CLI can name them without loading the gateway."""

from __future__ import annotations

from enum import StrEnum


class ProcessRole(StrEnum):
    """What a process of `fabric serve` is (not who a caller is: that is `context.Role`)."""

    ALL = "all"
    """Both planes in one gateway (the embedded default)."""
    PLATFORM = "platform"
    """The control plane; developers' Execute and Preview go over NATS to the replicas."""
    RUNTIME = "runtime"
    """One replica of a stage, serving that stage's apps directly (and the platform's
    forwarded queries from NATS)."""
