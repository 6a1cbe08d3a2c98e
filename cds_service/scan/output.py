"""The scan's files, written atomically, and the pseudonyms of patient ids.

Each file is written under a temporary name in the output folder and renamed into place only when the run has
finished; ``summary.json`` is renamed last and names the worklist's line count and SHA-256, so a killed run leaves
either the previous run's files or temporary ``.*.partial`` files, never a file that looks complete but is not.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

PSEUDONYM_KEY_ENV = "CDS_SCAN_PSEUDONYM_KEY"
WORKLIST, SUMMARY, REPORT = "worklist.ndjson", "summary.json", "report.html"


class Pseudonyms:
    """HMAC-SHA256 of the patient id under a key: the same id always gets the same pseudonym under one key.

    The key is ``CDS_SCAN_PSEUDONYM_KEY`` (so two runs, or a later re-identification by whoever holds the key,
    agree), else a random key for this run only, never written anywhere (the pseudonyms cannot be reversed).
    """

    def __init__(self, key: bytes | None = None) -> None:
        configured = os.environ.get(PSEUDONYM_KEY_ENV, "")
        self.key = key or configured.encode() or secrets.token_bytes(32)
        self.from_environment = key is None and bool(configured)

    def __call__(self, patient_id: str) -> str:
        return hmac.new(self.key, patient_id.encode(), hashlib.sha256).hexdigest()


class Output:
    """The output folder: files are written as ``.NAME.partial`` and put in place by ``commit``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.written: list[str] = []

    def partial(self, name: str) -> Path:
        return self.folder / f".{name}.partial"

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.partial(name).open("wb") as stream:
            stream.write(data)
            _sync(stream)
        self.written.append(name)

    def write_lines(self, name: str, lines: Iterable[bytes]) -> tuple[int, str]:
        """Write NDJSON lines; return their count and the file's SHA-256."""
        digest, count = hashlib.sha256(), 0
        with self.partial(name).open("wb") as stream:
            for line in lines:
                stream.write(line)
                digest.update(line)
                count += 1
            _sync(stream)
        self.written.append(name)
        return count, digest.hexdigest()

    def commit(self) -> None:
        """Rename every written file into place, in the order written (the summary last)."""
        for name in self.written:
            os.replace(self.partial(name), self.folder / name)

    def discard(self) -> None:
        for name in self.written:
            self.partial(name).unlink(missing_ok=True)


def _sync(stream: IO[bytes]) -> None:
    stream.flush()
    os.fsync(stream.fileno())


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
