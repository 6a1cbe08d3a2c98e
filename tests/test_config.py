"""Settings: defaults, a TOML file, CDS_* variables and overrides, last one wins; every value typed and checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.live import free_port

from cds_service import create_app
from cds_service.config import ConfigError, Settings, database_url, load_config

REPO = Path(__file__).resolve().parent.parent
CDS_SERVICE = Path(sys.executable).parent / "cds-service"  # the installed console script


@pytest.fixture(autouse=True)
def no_cds_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without CDS_* settings."""
    for name in [name for name in os.environ if name.startswith("CDS_")]:
        monkeypatch.delenv(name)


def toml(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "cds.toml"
    path.write_text(content)
    return path


def run(*args: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cds-service ARGS`` with its own data folder, as an operator would run it."""
    environment = {**os.environ, "CDS_DATA_DIR": str(tmp_path / "data"), **(env or {})}
    return subprocess.run([str(CDS_SERVICE), *args], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=60)


# --- sources and precedence -------------------------------------------------------------------------------------


def test_defaults_without_anything():
    settings = load_config()
    for name, field in Settings.model_fields.items():
        assert getattr(settings, name) == field.get_default(call_default_factory=True), name


def test_file_then_environment_then_overrides(tmp_path, monkeypatch):
    path = toml(tmp_path, 'max_cards = 3\nfhir_allowlist = ["https://fhir.example.org/r4"]\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("CDS_MAX_CARDS", "5")
    monkeypatch.setenv("CDS_FHIR_ALLOW_UNAUTHENTICATED", "yes")
    monkeypatch.setenv("CDS_HOOK_BUDGET_SECONDS", "0.9")
    settings = load_config(path, overrides={"log_level": "WARNING"})
    assert settings.max_cards == 5
    assert settings.fhir_allowlist == ["https://fhir.example.org/r4"]
    assert settings.fhir_allow_unauthenticated is True
    assert settings.hook_budget_seconds == 0.9
    assert settings.log_level == "WARNING"


def test_config_file_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_CONFIG", str(toml(tmp_path, "max_cards = 2\n")))
    assert load_config().max_cards == 2


def test_lists_and_tables_from_environment_are_json(monkeypatch):
    monkeypatch.setenv("CDS_CORS_ORIGINS", '["https://ehr.example.org"]')
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", '[{"iss": "https://ehr.example.org", "jku_allowlist": ["https://e/j"]}]')
    settings = load_config()
    assert settings.cors_origins == ["https://ehr.example.org"]
    assert settings.trusted_issuers[0].iss == "https://ehr.example.org"
    assert settings.trusted_issuers[0].jku_allowlist == ["https://e/j"]


@pytest.mark.parametrize(
    ("word", "expected"),
    [("1", True), ("true", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("no", False),
     ("off", False), ("NO", False)],
)
def test_boolean_words_from_environment(monkeypatch, word, expected):
    monkeypatch.setenv("CDS_METRICS_ENABLED", word)
    assert load_config().metrics_enabled is expected


def test_empty_text_leaves_an_optional_key_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_AUTH_REQUIRED", "")
    settings = load_config(toml(tmp_path, 'now = ""\npublic_base_url = ""\ndatabase_url = ""\n'))
    assert (settings.now, settings.public_base_url, settings.database_url, settings.auth_required) == (None,) * 4


def test_typed_values_are_parsed_once():
    settings = load_config(overrides={"now": "2026-11-01T08:00:00", "data_dir": "~/cds", "log_level": "debug"})
    assert settings.now is not None and settings.now.isoformat() == "2026-11-01T08:00:00+00:00"
    assert settings.data_dir == Path.home() / "cds"
    assert settings.log_level == "DEBUG"


# --- refused values: one line naming the key, the value and the source -----------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('max_cards = "eight"', "max_cards = 'eight': input should be a valid integer"),
        ('max_cards = "8"', "max_cards = '8': input should be a valid integer"),  # a file gives the real type
        ("max_cards = true", "max_cards = True: input should be a valid integer"),
        ("max_cards = 0", "max_cards = 0: input should be greater than 0"),
        ("max_json_depth = 6.5", "max_json_depth = 6.5: input should be a valid integer"),
        ("fhir_connect_timeout = -1", "fhir_connect_timeout = -1: input should be greater than 0"),
        ("fhir_retries = -1", "fhir_retries = -1: input should be greater than or equal to 0"),
        ('cors_origins = "https://ehr.example.org"', "cors_origins = 'https://ehr.example.org': input should be a "
                                                     "valid list"),
        ('cors_origins = ["(unclosed"]', "'(unclosed' is not a regular expression"),
        ('metrics_enabled = "no"', "metrics_enabled = 'no': input should be a valid boolean"),
        ('log_level = "LOUD"', "log_level = 'LOUD': input should be 'CRITICAL', 'ERROR', 'WARNING', 'INFO' or"),
        ('public_base_url = "cds.example.org"', "public_base_url = 'cds.example.org': not an absolute http(s)"),
        ('fhir_allowlist = ["ftp://fhir.example.org"]', "fhir_allowlist[0] = 'ftp://fhir.example.org': not an abs"),
        ('database_url = "not a url"', "database_url = '***': not a SQLAlchemy database URL"),  # it may hold a password
        ('now = "yesterday"', "now = 'yesterday': input should be a valid datetime"),
        ('rules_dir = "/nonexistent/rules"', "rules_dir = '/nonexistent/rules': not a folder"),
        ('jwt_algorithms = ["RS256", "HS256"]', "JWT algorithms not allowed: HS256"),
        ("jwt_algorithms = []", "jwt_algorithms = []: list should have at least 1 item"),
        ("no_such_key = 1", "no_such_key: unknown key"),
        ('trusted_issuers = [{iss = "https://ehr", jwks_url = "https://ehr/jwks", tenant = "x"}]',
         "trusted_issuers[0].tenant: unknown key"),
        ('trusted_issuers = [{iss = "https://ehr", jwks_url = "https://ehr/jwks", jwks = {keys = []}}]',
         "trusted_issuers[0]: give only one of jwks_url, jwks_file, jwks"),
        ('trusted_issuers = [{iss = "https://ehr", fhir_servers = "https://ehr/fhir", jku_allowlist = []}]',
         "trusted_issuers[0].fhir_servers = 'https://ehr/fhir': input should be a valid list"),
    ],
)
def test_bad_values_in_the_file_are_refused(tmp_path, line, message):
    path = toml(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith("configuration error: ")
    assert message in str(raised.value)
    assert str(raised.value).endswith(f"(from {path})")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CDS_MAX_CARDS", "many", "max_cards = 'many': input should be a valid integer (from CDS_MAX_CARDS)"),
        ("CDS_METRICS_ENABLED", "maybe", "metrics_enabled = 'maybe': input should be a valid boolean"),
        ("CDS_CORS_ORIGINS", "https://ehr.example.org", "cors_origins = 'https://ehr.example.org': not JSON"),
        ("CDS_TRUSTED_ISSUERS", '[{"iss": "x"}]', "trusted_issuers[0]: needs jwks_url, jwks_file, jwks or a jku"),
    ],
)
def test_bad_variables_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="CDS_") as raised:
        load_config()
    assert message in str(raised.value)
    assert f"(from {name})" in str(raised.value)


def test_the_budget_must_leave_time_to_fetch():
    with pytest.raises(ConfigError, match=r"^configuration error: fhir_budget_margin_seconds must be less than hook_"):
        load_config(overrides={"hook_budget_seconds": 0.2})


def test_the_highest_source_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_MAX_CARDS", "-3")
    with pytest.raises(ConfigError, match=r"max_cards = -3: .* \(from CDS_MAX_CARDS\)$"):
        load_config(toml(tmp_path, "max_cards = 3\n"))


def test_overrides_are_checked_like_the_file():
    with pytest.raises(ConfigError, match=r"^configuration error: nope: unknown key$"):
        load_config(overrides={"nope": 1})
    with pytest.raises(ConfigError, match=r"^configuration error: max_cards = 'eight': input should be a valid int"):
        create_app({"max_cards": "eight"})


def test_a_database_password_never_shows_in_an_error():
    with pytest.raises(ConfigError) as raised:
        load_config(overrides={"database_url": "postgresql+psycopg://cds:hunter2@db/cds", "max_cards": "x"})
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        load_config(overrides={"database_url": "hunter2 is no url"})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("content", ["max_cards = \n", "[unclosed\n"])
def test_unreadable_files_are_reported(tmp_path, content):
    path = toml(tmp_path, content)
    with pytest.raises(ConfigError, match=f"cannot read configuration file {path}: "):
        load_config(path)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing.toml: No such file"):
        load_config(tmp_path / "missing.toml")


# --- the command line stops before any port is opened ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        ('max_cards = "eight"\n', {}, "max_cards = 'eight': input should be a valid integer (from {path})"),
        ("max_cards = 4\n", {"CDS_CORS_ORIGINS": "https://ehr.example.org"}, "not JSON"),
        ("max_cards = 4\n", {"CDS_METRICS_ENABLED": "maybe"}, "(from CDS_METRICS_ENABLED)"),
    ],
)
def test_serve_with_bad_settings_exits_with_one_line(tmp_path, content, env, expected):
    path = toml(tmp_path, content)
    result = run("serve", "--port", str(free_port()), "--config", str(path), tmp_path=tmp_path, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cds-service: configuration error: ")
    assert expected.format(path=path) in lines[0]


# --- the data folder -----------------------------------------------------------------------------------------------


def test_sqlite_file_in_data_dir_is_the_default(tmp_path):
    url = database_url(load_config(overrides={"data_dir": str(tmp_path / "new")}))
    assert url == f"sqlite:///{tmp_path / 'new' / 'cds-service.sqlite3'}"
    assert (tmp_path / "new").is_dir()


def test_a_data_folder_that_cannot_be_created_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")  # refused for every user, root included
    with pytest.raises(ConfigError, match=f"^cannot create data folder {blocker}/sub: Not a directory$"):
        create_app({"data_dir": str(blocker / "sub")})
    with pytest.raises(ConfigError, match=f"^cannot create database folder {blocker}/db: Not a directory$"):
        create_app({"database_url": f"sqlite:///{blocker}/db/cds.sqlite3"})
    result = run("serve", "--port", str(free_port()), tmp_path=tmp_path, env={"CDS_DATA_DIR": str(blocker / "sub")})
    assert result.returncode == 2
    assert result.stderr.strip() == f"cds-service: cannot create data folder {blocker}/sub: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_a_read_only_data_folder_is_one_clear_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=f"^cannot write to data folder {folder}: Permission denied$"):
        create_app({"data_dir": str(folder)})


# --- config show ---------------------------------------------------------------------------------------------------


def test_config_show_prints_the_effective_settings_with_secrets_masked(tmp_path):
    path = toml(tmp_path, "\n".join([
        'database_url = "postgresql+psycopg://cds:hunter2@db.example.org/cds"',
        "max_cards = 3",
        "[[trusted_issuers]]",
        'iss = "https://ehr.example.org"',
        'jwks = {keys = [{kty = "EC", crv = "P-384", kid = "k1", x = "pub-x", y = "pub-y", d = "private-d"}]}',
    ]) + "\n")
    result = run("config", "show", "--config", str(path), tmp_path=tmp_path, env={"CDS_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "private-d" not in result.stdout
    shown = json.loads(result.stdout)
    assert set(shown) == set(Settings.model_fields)
    assert shown["database_url"] == "postgresql+psycopg://cds:***@db.example.org/cds"
    assert shown["max_cards"] == 3 and shown["log_level"] == "WARNING"
    assert shown["data_dir"] == str(tmp_path / "data")
    assert shown["trusted_issuers"][0]["jwks"]["keys"][0] == {
        "kty": "EC", "crv": "P-384", "kid": "k1", "x": "pub-x", "y": "pub-y", "d": "***"
    }


def test_config_show_refuses_bad_settings_in_one_line(tmp_path):
    result = run("config", "show", tmp_path=tmp_path, env={"CDS_MAX_CARDS": "eight"})
    assert result.returncode == 2
    assert result.stderr == ("cds-service: configuration error: max_cards = 'eight': input should be a valid integer "
                             "(from CDS_MAX_CARDS)\n")


# --- documentation -------------------------------------------------------------------------------------------------


def test_every_key_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(Settings.model_fields)
