"""The README's example is a real fixture, and its response is what the service answers today."""
from __future__ import annotations

import json
import re
from pathlib import Path

from cds_service import create_app

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _without_uuids(value):
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


def test_readme_example_response_matches_the_service(tmp_path):
    fixture = re.search(r"--data @(fixtures/requests/[\w.-]+\.json)", README).group(1)
    documented = json.loads(re.search(r"```json\n(\{.*?\n\})\n```", README, re.S).group(1))
    now = re.search(r"CDS_NOW=(\S+)", README).group(1)
    client = create_app({"data_dir": str(tmp_path), "now": now}).test_client()
    service = re.search(r"(http://127\.0\.0\.1:8080/cds-services/[\w-]+)\s*\|", README).group(1).rsplit("/", 1)[1]
    response = client.post(f"/cds-services/{service}", data=(REPO / fixture).read_bytes(),
                           content_type="application/json")
    assert response.status_code == 200
    assert _without_uuids(response.get_json()) == _without_uuids(documented)


def test_layout_section_names_every_package_and_only_those():
    section = README.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(\w+)/` \|", section, re.M))
    top_row = re.search(r"^\| (`\w+\.py`.*?) \|", section, re.M).group(1)
    modules = set(re.findall(r"`(\w+)\.py`", top_row))
    packages = {p.parent.name for p in (REPO / "cds_service").glob("*/__init__.py")}
    top_modules = {p.stem for p in (REPO / "cds_service").glob("*.py")} - {"__init__"}
    assert named == packages
    assert modules == top_modules
