"""A writable copy of the shipped rule set, for tests that break one file and see what the service says."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_service.rules.loader import shipped_rules_dir


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(shipped_rules_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target


def edit_rule_file(path: Path, change: Callable[[Any], None]) -> None:
    """Apply ``change`` to the parsed YAML file at ``path`` and write it back."""
    data = yaml.safe_load(path.read_text("utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
