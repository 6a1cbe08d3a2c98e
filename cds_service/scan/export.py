"""SOURCE as a FHIR server: the Bulk Data kick-off, status polling and download of the files into a folder.

``$export`` at system, Group (``--group ID``) or Patient level, ``_type`` limited to the types the prefetch
templates read, ``_since`` when given. The status URL is polled as the server's ``Retry-After`` says (seconds or
an HTTP date, at most ``MAX_WAIT`` apart); the manifest's output files are saved as ``<type>-<n>.ndjson`` and its
error files as ``error-<n>.ndjson`` listed in a saved ``manifest.json``, so the folder reads like any other export.
The bearer token comes from ``CDS_SCAN_BEARER_TOKEN``, or from the server's authorization server by SMART Backend
Services (scan/smart.py); either is sent only to the server's own origin, asked for afresh on each request so a
SMART token is renewed during a long export.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

TOKEN_ENV = "CDS_SCAN_BEARER_TOKEN"
MAX_WAIT = 120.0  # seconds between polls, whatever Retry-After says
DEADLINE = 24 * 3600.0  # an export still running after a day is given up
TIMEOUT = 60


Bearer = Callable[[], str | None]  # the access token to send now (None: none)


class ExportFailed(Exception):
    """The server refused or failed the export; the message is its own words (an OperationOutcome's)."""


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def environment_token() -> str | None:
    """The bearer token of ``CDS_SCAN_BEARER_TOKEN``, if set."""
    return os.environ.get(TOKEN_ENV) or None


def download_export(
    base: str, folder: Path, types: Iterable[str], *, group: str | None = None, patient_level: bool = False,
    since: str | None = None, bearer: Bearer = environment_token,
) -> Path:
    """Run the export and save its files in ``folder``; raise ExportFailed with the server's reason."""
    base = base.rstrip("/")
    session = requests.Session()
    session.headers["Accept"] = "application/fhir+json"
    level = f"Group/{group}/" if group else "Patient/" if patient_level else ""
    params = {"_type": ",".join(sorted(types)), **({"_since": since} if since else {})}
    kick = _get(session, f"{base}/{level}$export", bearer, base, params=params, headers={"Prefer": "respond-async"})
    if kick.status_code != 202 or "Content-Location" not in kick.headers:
        raise ExportFailed(f"the kick-off was answered {kick.status_code}: {_reason(kick)}")
    manifest = _poll(session, kick.headers["Content-Location"], bearer, base)
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for number, item in enumerate(manifest.get("output") or [], start=1):
        _download(session, item["url"], folder / f"{item.get('type', 'Resource')}-{number}.ndjson", bearer, base)
    for number, item in enumerate(manifest.get("error") or [], start=1):
        name = f"error-{number}.ndjson"
        _download(session, item["url"], folder / name, bearer, base)
        errors.append({"type": "OperationOutcome", "url": name})
    (folder / "manifest.json").write_text(json.dumps({**manifest, "error": errors}))
    return folder


def _poll(session: requests.Session, status_url: str, bearer: Bearer, base: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        answer = _get(session, status_url, bearer, base)
        if answer.status_code == 200:
            try:
                manifest = answer.json()
            except ValueError:
                raise ExportFailed("the export's manifest is not JSON") from None
            if not isinstance(manifest, dict):
                raise ExportFailed("the export's manifest is not a JSON object")
            return manifest
        if answer.status_code != 202:
            raise ExportFailed(f"the export status was answered {answer.status_code}: {_reason(answer)}")
        if time.monotonic() > deadline:
            raise ExportFailed("the export did not finish within a day")
        time.sleep(_retry_after(answer.headers.get("Retry-After")))


def _retry_after(value: str | None) -> float:
    """Seconds to wait: Retry-After as seconds or as an HTTP date; 1 s when absent or unreadable."""
    if not value:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    return min(max(seconds, 0.0), MAX_WAIT)


def _download(session: requests.Session, url: str, path: Path, bearer: Bearer, base: str) -> None:
    with _get(session, url, bearer, base, stream=True) as answer:
        if answer.status_code != 200:
            raise ExportFailed(f"{url} was answered {answer.status_code}: {_reason(answer)}")
        with path.open("wb") as stream:
            for chunk in answer.iter_content(1 << 20):
                stream.write(chunk)


def _get(session: requests.Session, url: str, bearer: Bearer, base: str, **kwargs: Any) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if _origin(url) == _origin(base) and (value := bearer()):
        headers["Authorization"] = f"Bearer {value}"
    try:
        return session.get(url, headers=headers, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise ExportFailed(f"{_origin(url)} cannot be reached: {type(exc).__name__}") from None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _reason(answer: requests.Response) -> str:
    """The OperationOutcome's diagnostics, or the start of whatever the server sent."""
    try:
        issues = answer.json().get("issue", [])
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code") for i in issues]
        return "; ".join(t for t in texts if isinstance(t, str)) or "no reason given"
    except (ValueError, AttributeError):
        return answer.text[:200] or "no reason given"
