"""Configuration: defaults, a TOML file, CDS_* variables and overrides, last one wins."""
from __future__ import annotations

from pathlib import Path

import pytest

from cds_service.config import DEFAULTS, ConfigError, database_url, load_config


def test_defaults_without_anything():
    config = load_config(environ={})
    assert config == DEFAULTS


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "cds.toml"
    path.write_text('max_cards = 3\nfhir_allowlist = ["https://fhir.example.org/r4"]\nlog_level = "DEBUG"\n')
    environ = {"CDS_MAX_CARDS": "5", "CDS_FHIR_ALLOW_UNAUTHENTICATED": "yes", "CDS_HOOK_BUDGET_SECONDS": "0.9"}
    config = load_config(path, overrides={"log_level": "WARNING"}, environ=environ)
    assert config["max_cards"] == 5
    assert config["fhir_allowlist"] == ["https://fhir.example.org/r4"]
    assert config["fhir_allow_unauthenticated"] is True
    assert config["hook_budget_seconds"] == 0.9
    assert config["log_level"] == "WARNING"


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "cds.toml"
    path.write_text("max_cards = 2\n")
    assert load_config(environ={"CDS_CONFIG": str(path)})["max_cards"] == 2


def test_json_lists_from_environment():
    config = load_config(environ={"CDS_CORS_ORIGINS": '["https://ehr.example.org"]'})
    assert config["cors_origins"] == ["https://ehr.example.org"]


@pytest.mark.parametrize("content", ["nope = 1\n", "max_cards = \n"])
def test_bad_files_are_reported(tmp_path, content):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(path, environ={})


def test_bad_variable_is_reported():
    with pytest.raises(ConfigError, match="CDS_MAX_CARDS"):
        load_config(environ={"CDS_MAX_CARDS": "many"})


def test_sqlite_file_in_data_dir_is_the_default(tmp_path):
    url = database_url({**DEFAULTS, "data_dir": str(tmp_path / "new")})
    assert url == f"sqlite:///{tmp_path / 'new' / 'cds-service.sqlite3'}"
    assert (tmp_path / "new").is_dir()


def test_every_key_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(DEFAULTS)
