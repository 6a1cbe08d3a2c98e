"""deploy/ and the Dockerfile agree with the code: commands parse, probes hit real routes, configuration loads."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cds_service.server.cli import build_parser
from cds_service.config import ENV_PREFIX, Settings, load_config
from cds_service.security.issuers import load_issuers

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes, by kind."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def container() -> dict[str, Any]:
    return manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


OLDEST_KUBERNETES = "1.25.0"  # the oldest API schemas kubernetes-validate ships; HPA v2 and PDB v1 are GA there


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    """Strict: a misspelt or misplaced field fails here, as it would fail ``kubectl apply``."""
    checked = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] != "Kustomization":  # kustomize's own file, not an API object
                kubernetes_validate.validate(document, version, strict=True)
                checked.append(document["kind"])
    assert set(checked) >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"}


def test_the_kubernetes_schema_check_catches_a_misspelt_field() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbes"] = pod["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(manifests()["Kustomization"]["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_probes_hit_routes_the_service_serves(client, probe: str) -> None:
    spec = container()[probe]["httpGet"]
    assert spec["port"] == "http" and container()["ports"][0]["containerPort"] == 8080
    assert client.get(spec["path"]).status_code == 200


def test_readiness_is_the_database_aware_probe() -> None:
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_command_is_one_the_cli_accepts() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "docker-compose.yml").read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    for argv in (container()["args"], compose["x-instance"]["command"], cmd):
        assert argv[0] == "cds-service"
        args = build_parser().parse_args(argv[1:])
        assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8080)
    assert "--insecure" not in container()["args"] and "--insecure" not in cmd


def test_the_config_map_and_secret_are_valid_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = manifests()["ConfigMap"]["data"]["config.toml"]
    assert set(tomllib.loads(toml)) <= set(Settings.model_fields)
    path = tmp_path / "config.toml"
    path.write_text(toml)
    secret = manifests()["Secret"]["stringData"]
    for name, value in secret.items():
        assert name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):].lower() in Settings.model_fields
        monkeypatch.setenv(name, value)
    settings = load_config(path)
    assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://")
    assert load_issuers(settings)  # the pods serve with authentication on


def test_the_pod_runs_as_the_image_user_without_root() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/metrics"} in container()["env"]
    assert any(m["mountPath"] == "/tmp" for m in container()["volumeMounts"])
