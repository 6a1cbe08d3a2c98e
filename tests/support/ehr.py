"""An EHR simulator: calls a CDS service the way an EHR (and the CDS Hooks sandbox) does.

It reads the service's discovery document, fills each prefetch template of the chosen service with the hook
context (the CDS Hooks 2.0.1 tokens: ``{{context.<field>}}`` for root primitive context fields and the four user
tokens derived from ``context.userId``), runs it against a FHIR server, and posts the hook request:

* a read (``Patient/123``) is a GET; a search is a GET, or a form-encoded ``POST [type]/_search`` when the URL
  would be longer than ``MAX_GET_URL`` (long code lists), falling back to GET if the server refuses the POST;
* a key whose token has no value, or whose fetch fails, is omitted from ``prefetch`` (never ``null``);
* like the sandbox, only the first page of a search is sent unless ``follow_pages`` asks for every page (an EHR
  that hands over the complete result).
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import requests

MAX_GET_URL = 2048
FHIR_JSON = "application/fhir+json"
_TOKEN = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def token_value(token: str, context: Mapping[str, Any]) -> str | None:
    """The value of one prefetch token in ``context``; None when the token has no value in it."""
    if token.startswith("context."):
        value = context.get(token.removeprefix("context."))
        return value if isinstance(value, str) and value else None
    if token in _USER_TOKENS:
        kind, _, ident = str(context.get("userId", "")).partition("/")
        return ident if kind == _USER_TOKENS[token] and ident else None
    return None


def _next_url(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link", [])
    return next((link["url"] for link in links if link.get("relation") == "next"), None)


def fill_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The template with every token replaced by its URL-encoded value; None if any token has no value."""
    values = [token_value(match.group(1), context) for match in _TOKEN.finditer(template)]
    if any(v is None for v in values):
        return None
    filled = iter(quote(v, safe="") for v in values if v is not None)
    return _TOKEN.sub(lambda _: next(filled), template)


@dataclass
class HookExchange:
    """One hook call: what was sent and what came back."""

    request: dict[str, Any]
    response: requests.Response
    omitted: list[str] = field(default_factory=list)  # prefetch keys left out because their fetch failed


class EhrSimulator:
    """An EHR that knows one CDS service (``service_base``) and one FHIR server (``fhir_base``)."""

    def __init__(self, service_base: str, fhir_base: str, *, timeout: float = 30.0):
        self.service_base = service_base.rstrip("/")
        self.fhir_base = fhir_base.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self._services: dict[str, dict[str, Any]] | None = None

    def close(self) -> None:
        self.http.close()

    def discovery(self) -> dict[str, dict[str, Any]]:
        """The service descriptors by hook, from ``GET /cds-services`` (read once)."""
        if self._services is None:
            resp = self.http.get(f"{self.service_base}/cds-services", timeout=self.timeout)
            resp.raise_for_status()
            self._services = {s["hook"]: s for s in resp.json()["services"]}
        return self._services

    def prefetch(
        self, hook: str, context: Mapping[str, Any], *, follow_pages: bool = False
    ) -> tuple[dict[str, Any], list[str]]:
        """The prefetch for ``hook`` in ``context``, and the keys omitted because they could not be fetched."""
        prefetch: dict[str, Any] = {}
        omitted: list[str] = []
        for key, template in self.discovery()[hook].get("prefetch", {}).items():
            path = fill_template(template, context)
            result = None if path is None else self.fetch(path, follow_pages=follow_pages)
            if result is None:
                omitted.append(key)
            else:
                prefetch[key] = result
        return prefetch, omitted

    def fetch(self, path: str, *, follow_pages: bool = False) -> dict[str, Any] | None:
        """Run a filled template against the FHIR server: the resource or Bundle, None when it failed."""
        kind, _, query = path.partition("?")
        url = f"{self.fhir_base}/{path}"
        if not query:
            return self._get(url)
        bundle = None
        if len(url) > MAX_GET_URL:
            bundle = self._json(
                self.http.post(
                    f"{self.fhir_base}/{kind}/_search",
                    data=parse_qsl(query, keep_blank_values=True),
                    headers={"Accept": FHIR_JSON},
                    timeout=self.timeout,
                )
            )
        if bundle is None:
            bundle = self._get(url)
        if bundle is not None and follow_pages:
            bundle = self._all_pages(bundle)
        return bundle

    def _all_pages(self, bundle: dict[str, Any]) -> dict[str, Any] | None:
        """One searchset with the entries of every page and no next link; None if a page failed."""
        entries = list(bundle.get("entry", []))
        page = bundle
        while (url := _next_url(page)) is not None:
            page = self._get(url)
            if page is None:
                return None
            entries.extend(page.get("entry", []))
        whole = {k: v for k, v in bundle.items() if k not in ("link", "entry")}
        if entries:
            whole["entry"] = entries
        return whole

    def _get(self, url: str) -> dict[str, Any] | None:
        return self._json(self.http.get(url, headers={"Accept": FHIR_JSON}, timeout=self.timeout))

    @staticmethod
    def _json(resp: requests.Response) -> dict[str, Any] | None:
        if not resp.ok:
            return None
        try:
            body = resp.json()
        except ValueError:
            return None
        ok = isinstance(body, dict) and body.get("resourceType") not in (None, "OperationOutcome")
        return body if ok else None

    def request(
        self,
        hook: str,
        context: Mapping[str, Any],
        *,
        prefetch: bool = True,
        send_fhir_server: bool = True,
        follow_pages: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """The hook request body, prefetched unless ``prefetch`` is False, and the prefetch keys left out."""
        body: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": dict(context)}
        if send_fhir_server:
            body["fhirServer"] = self.fhir_base
        omitted: list[str] = []
        if prefetch:
            values, omitted = self.prefetch(hook, context, follow_pages=follow_pages)
            if values:
                body["prefetch"] = values
        return body, omitted

    def post(self, hook: str, body: Any, *, content_type: str = "application/json") -> requests.Response:
        """POST ``body`` (JSON-encoded unless bytes) to the service for ``hook``."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(
            f"{self.service_base}/cds-services/{self.discovery()[hook]['id']}",
            data=data,
            headers={"Accept": "application/json", "Content-Type": content_type},
            timeout=self.timeout,
        )

    def call(self, hook: str, context: Mapping[str, Any], **options: bool) -> HookExchange:
        """Build the request as ``request`` does (same options) and POST it to the service for ``hook``."""
        body, omitted = self.request(hook, context, **options)
        return HookExchange(body, self.post(hook, body), omitted)
