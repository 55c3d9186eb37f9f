"""The container image recipe and the Kubernetes manifests: hadolint-clean, valid against
the Kubernetes schemas, the stages alike, and consistent with what `fabric` accepts."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints
import pytest
import yaml

from fabric.cli import build_parser
from fabric.config import resolve_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
STAGES = ("development", "test", "production")
KUBERNETES = "1.37.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_the_dockerfile_is_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_unprivileged_and_checks_health_over_grpc() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM ", text, flags=re.MULTILINE)
    assert len(stages) == 2  # build, then a runtime without the build tools
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert 'CMD ["fabric", "health", "--address", "127.0.0.1:8081"]' in text
    # the health command the image runs exists with those options
    args = build_parser().parse_args(["health", "--address", "127.0.0.1:8081"])
    assert args.func.__name__ == "cmd_health"


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_every_kustomization_lists_files_that_exist_and_covers_every_stage() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        [document] = _documents(kustomization)
        for resource in document["resources"]:
            assert (kustomization.parent / resource).exists(), (kustomization, resource)
        listed = {kustomization.parent / r for r in document["resources"]}
        if kustomization.parent != DEPLOY:
            files = set(kustomization.parent.glob("*.yaml")) - {kustomization}
            assert listed == files, f"{kustomization}: unlisted or missing manifests"
    [top] = _documents(DEPLOY / "kustomization.yaml")
    assert set(top["resources"]) == {"platform", *(f"stages/{s}" for s in STAGES)}


def _normalized(stage: str, text: str) -> str:
    """A stage's manifest with its name and its sizes taken out."""
    text = text.replace(stage, "STAGE")
    return re.sub(r"(replicas|minReplicas|maxReplicas): \d+", r"\1: N", text)


@pytest.mark.parametrize("stage", STAGES[1:])
def test_the_stages_differ_only_in_name_and_size(stage: str) -> None:
    reference = DEPLOY / "stages" / "development"
    for path in sorted(reference.iterdir()):
        other = DEPLOY / "stages" / stage / path.name
        assert _normalized(stage, other.read_text()) == _normalized(
            "development", path.read_text()
        ), other


@pytest.mark.parametrize("stage", STAGES)
def test_a_runtime_serves_its_own_stage_with_probes_on_the_health_port(stage: str) -> None:
    [deployment] = _documents(DEPLOY / "stages" / stage / "deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.role, args.stage_name) == ("serve", "runtime", stage)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_shared_configuration_file_is_one_fabric_accepts(tmp_path: Path) -> None:
    [config_map] = _documents(DEPLOY / "platform" / "configmap.yaml")
    text = config_map["data"]["fabric.toml"]
    tomllib.loads(text)
    path = tmp_path / "fabric.toml"
    path.write_text(text, encoding="utf-8")
    settings = resolve_settings({}, config_file=path).settings  # unknown keys would fail
    assert settings.metrics_address() == ("0.0.0.0", 9464)
    assert settings.tls and settings.auth == "jwt"
