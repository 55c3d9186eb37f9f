"""The Grafana dashboard in deploy/grafana: valid JSON of a dashboard, and every metric
its PromQL names is one the gateway exports (so a renamed metric cannot leave a panel
silently empty)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.query.engine import QueryEngine

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fabric.json"
METRIC = re.compile(r"\b(fabric_[A-Za-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture
def exported(tmp_path: Path) -> Iterator[set[str]]:
    """The series names a gateway with a bus exports (a platform or a runtime replica:
    the bus figures appear once a bus reports)."""
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    engine = QueryEngine(store, Settings(home=tmp_path, metrics_port=0))
    engine.metrics.add_snapshot(lambda: {"bus_connected": 1.0, "bus_reconnects": 0.0})
    try:
        names = set()
        for family in engine.metrics.registry.collect():
            for suffix in SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
        yield names
    finally:
        engine.close()
        store.close()


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_is_a_grafana_dashboard_with_one_query_per_target_at_least() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fabric-gateway" and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job"}


def test_every_metric_the_dashboard_queries_is_exported_by_the_gateway(
    exported: set[str],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in _expressions(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"panel {title!r} queries no Fabric metric: {expr}"
        missing = names - exported
        assert not missing, f"panel {title!r} names metrics the gateway does not export: {missing}"
        used |= names
    # The operations metrics this dashboard exists for are on it.
    assert {
        "fabric_pool_connections_in_use",
        "fabric_pool_connections_idle",
        "fabric_pool_waiting",
        "fabric_auth_failures_total",
        "fabric_connection_query_seconds_bucket",
        "fabric_running_queries",
    } <= used


def test_a_misspelt_metric_would_be_caught(exported: set[str]) -> None:
    assert not set(METRIC.findall("rate(fabric_querys_total[5m])")) <= exported
