"""deploy/ and the Dockerfile agree with the code: commands parse, probes hit real routes, configuration loads."""
from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cds_service.config import ENV_PREFIX, Settings, load_config
from cds_service.security.issuers import load_issuers
from cds_service.security.modes import check_bind_safety
from cds_service.server.cli import build_parser, gunicorn_options
from cds_service.server.metrics import metrics_address

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


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def instruction(name: str) -> list[str]:
    """The exec-form (JSON) argument of the Dockerfile's one ``name`` instruction."""
    (found,) = re.findall(rf"^{name} (\[.*\])$", dockerfile(), re.MULTILINE)
    return json.loads(found)


def cli(argv: list[str]) -> Any:
    assert argv[0] == "cds-service"
    return build_parser().parse_args(argv[1:])


def test_every_command_is_one_the_cli_accepts() -> None:
    """Kubernetes ``args`` and compose ``command`` replace the image's CMD: all follow its ENTRYPOINT."""
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "docker-compose.yml").read_text())["x-instance"]
    entrypoint, cmd = instruction("ENTRYPOINT"), instruction("CMD")
    assert "command" not in container() and "entrypoint" not in compose  # either would replace the ENTRYPOINT
    for args in (cmd, container()["args"], compose["command"]):
        parsed = cli(entrypoint + args)
        assert (parsed.command, parsed.host, parsed.port) == ("serve", "0.0.0.0", 8080)
    assert "--insecure" not in entrypoint + cmd + container()["args"]
    assert cli(entrypoint + compose["command"]).insecure


def test_insecure_after_the_image_name_serves_on_all_interfaces() -> None:
    """As the Dockerfile says: ``docker run IMAGE --insecure`` appends to the ENTRYPOINT (replacing CMD)."""
    parsed = cli([*instruction("ENTRYPOINT"), "--insecure"])
    assert parsed.insecure and (parsed.host, parsed.port) == ("0.0.0.0", 8080)


def test_the_pod_drains_before_gunicorn_stops() -> None:
    """preStop pauses while the endpoint removal spreads; the grace period covers it and gunicorn's drain."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    drain = gunicorn_options("0.0.0.0", 8080, 2, 4, "INFO")["graceful_timeout"]
    assert int(command[1]) > 0 and int(command[1]) + drain < pod["terminationGracePeriodSeconds"]


def test_the_data_dir_is_made_in_the_image_for_its_user() -> None:
    """A named volume takes the owner of the image's directory; a missing one comes up owned by root."""
    data_dir = re.search(r"CDS_DATA_DIR=(\S+)", dockerfile()).group(1)
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile(), re.MULTILINE).groups()
    made = rf"install --directory --owner={uid} --group={gid} --mode=0700 {re.escape(data_dir)}$"
    assert re.search(made, dockerfile(), re.MULTILINE)


def test_the_final_stage_takes_only_the_virtual_environment() -> None:
    """No wheels or source reach the final stage; the venv's python links to the base's, so both stages match."""
    assert re.findall(r"^COPY --from=(.*)$", dockerfile(), re.MULTILINE) == ["build /opt/venv /opt/venv"]
    assert "PATH=/opt/venv/bin:$PATH" in dockerfile()
    bases = re.findall(r"^FROM (\S+)", dockerfile(), re.MULTILINE)
    assert len(bases) == 2 and bases[0] == bases[1] and bases[0].startswith("python:3.11-slim-bookworm")
    assert "pip install --require-hashes -r requirements.lock" in dockerfile()


def test_the_build_context_holds_every_file_the_dockerfile_copies() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    for sources in re.findall(r"^COPY (?!--from)(.*) \S+$", dockerfile(), re.MULTILINE):
        assert {source.rstrip("/") for source in sources.split()} <= allowed, sources


def locked_versions() -> dict[str, Version]:
    """requirements.lock's pins, by normalised name."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def with_extras(requirement: Requirement) -> list[Requirement]:
    """The requirement and what its extras add (from the installed distribution's metadata)."""
    added = []
    for extra in requirement.extras:
        for line in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                added.append(dependency)
    return [requirement, *added]


def lock_problems(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    problems = []
    for requirement in (r for line in requirements for r in with_extras(Requirement(line))):
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"requirements.lock has {requirement.name}=={pin}, pyproject wants {requirement}")
    return problems


def test_the_lock_pins_every_dependency_pyproject_names() -> None:
    """The image installs exactly requirements.lock (with --require-hashes), so it must keep up with pyproject."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    problems = lock_problems(wanted, locked_versions())
    assert not problems, "regenerate it with scripts/lock: " + "; ".join(problems)


def test_the_lock_check_catches_a_missing_or_outdated_pin() -> None:
    pins = locked_versions()
    assert lock_problems(["psycopg[binary]>=3.1"], pins) == []
    del pins["psycopg-binary"]
    assert lock_problems(["psycopg[binary]>=3.1"], pins) == ["psycopg-binary is not in requirements.lock"]
    outdated = f"requirements.lock has flask=={pins['flask']}, pyproject wants flask>=99"
    assert lock_problems(["flask>=99"], pins) == [outdated]
    assert lock_problems(["pydantic-settings>=2"], {}) == ["pydantic-settings is not in requirements.lock"]


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


def test_every_public_bind_has_a_public_base_url_and_kubernetes_scrapes_metrics_bind(tmp_path: Path) -> None:
    """deploy/ listens on 0.0.0.0: with authentication on, serve needs public_base_url (JWT aud), and the scraper
    reads the metrics where metrics_bind serves them, not from the main port (which needs a JWT)."""
    path = tmp_path / "config.toml"
    path.write_text(manifests()["ConfigMap"]["data"]["config.toml"])
    config = load_config(path)
    assert check_bind_safety("0.0.0.0", config, insecure=False) is None
    pod = manifests()["Deployment"]["spec"]["template"]
    host, port = metrics_address(config) or ("", 0)
    assert host == "0.0.0.0" and pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert {"name": "metrics", "containerPort": port} in container()["ports"]
    assert all(p["targetPort"] == "http" for p in manifests()["Service"]["spec"]["ports"])  # never the metrics
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "docker-compose.yml").read_text())
    assert compose["x-instance"]["environment"]["CDS_PUBLIC_BASE_URL"] == "http://127.0.0.1:8080"
    readme = (REPO / "README.md").read_text()
    docker_run = readme[readme.index("docker run") : readme.index("```", readme.index("docker run"))]
    assert "CDS_PUBLIC_BASE_URL=https://" in docker_run
