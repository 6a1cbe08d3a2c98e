"""The files of a Bulk FHIR export folder: which to read, which to skip and why, what the export's manifest says.

A Bulk Data export is one or more NDJSON files per resource type (``Observation.ndjson``, ``Observation.2.ndjson``
or ``Observation-1.ndjson.gz``), plus, when a client saved it, the server's ``manifest.json`` whose ``error``
entries name NDJSON files of OperationOutcomes about what the server could not export. Only the head of each file
is read here (to tell an NDJSON file from anything else); the lines are read by the Dask workers.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "manifest.json"
SUFFIXES = (".ndjson", ".ndjson.gz")
HEAD_LIMIT = 1 << 20  # a first line longer than this is not a plausible FHIR resource line


@dataclass(frozen=True, slots=True)
class DataFile:
    path: str
    compressed: bool


@dataclass(slots=True)
class Source:
    """What a scan reads, and what it leaves out with the reason (file and, where known, line)."""

    files: list[DataFile] = field(default_factory=list)
    skipped_files: list[dict[str, Any]] = field(default_factory=list)
    export_errors: list[dict[str, Any]] = field(default_factory=list)


class SourceError(Exception):
    """SOURCE cannot be read at all (it is not a folder)."""


def open_source(folder: Path) -> Source:
    """The data files of ``folder`` (not its subfolders), in name order, and what is skipped."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder of Bulk FHIR NDJSON files")
    source = Source()
    error_files = _manifest_errors(folder, source)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name == MANIFEST or path.name in error_files:
            continue
        if not path.name.endswith(SUFFIXES):
            source.skipped_files.append({"file": path.name, "reason": "not an .ndjson or .ndjson.gz file"})
            continue
        problem = _not_ndjson(path)
        if problem:
            source.skipped_files.append({"file": path.name, "reason": problem})
        else:
            source.files.append(DataFile(str(path), compressed=path.name.endswith(".gz")))
    return source


def _manifest_errors(folder: Path, source: Source) -> set[str]:
    """Record the manifest's error files (each OperationOutcome line of those present); return their names."""
    path = folder / MANIFEST
    if not path.is_file():
        return set()
    try:
        manifest = json.loads(path.read_bytes())
        entries = manifest.get("error") or []
        urls = [e["url"] for e in entries if isinstance(e, dict) and isinstance(e.get("url"), str)]
    except (ValueError, AttributeError, TypeError):
        source.skipped_files.append({"file": MANIFEST, "reason": "not a Bulk Data manifest (JSON object)"})
        return set()
    names = {url.rstrip("/").rsplit("/", 1)[-1] for url in urls}
    for name in sorted(names):
        local = folder / name
        if not local.is_file():
            source.export_errors.append({"file": name, "problem": "the manifest lists it as an error file; absent"})
            continue
        for number, line in enumerate(_lines(local), start=1):
            source.export_errors.append({"file": name, "line": number, "problem": _outcome_text(line)})
    return names


def _lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            return [line for line in stream.read().splitlines() if line.strip()]
    except OSError as exc:
        return [f"unreadable: {exc}".encode()]


def _outcome_text(line: bytes) -> str:
    """The export server's words from one OperationOutcome line (its issues' diagnostics or details text)."""
    try:
        outcome = orjson.loads(line)
        texts = [
            issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
            for issue in outcome.get("issue", [])
        ]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return f"the export server reported an error: {line[:200].decode(errors='replace')}"
    return "the export server reported: " + ("; ".join(t for t in texts if isinstance(t, str) and t) or "an error")


def _not_ndjson(path: Path) -> str | None:
    """Why the file is not NDJSON of FHIR resources, judged from its first line; None when it looks right."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            head = stream.readline(HEAD_LIMIT)
    except (OSError, EOFError) as exc:
        return f"not NDJSON: cannot be read ({exc})"
    if not head.strip():
        return "empty: no resource on its first line"
    try:
        first = orjson.loads(head)
    except orjson.JSONDecodeError:
        return "not NDJSON: its first line is not a JSON value"
    if not isinstance(first, dict) or not isinstance(first.get("resourceType"), str):
        return "not NDJSON of FHIR resources: its first line is not a resource (a JSON object with resourceType)"
    return None
