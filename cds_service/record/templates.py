"""The prefetch templates the services publish in discovery, built from the terminology's code lists.

Templates use only ``{{context.patientId}}`` (legal in CDS Hooks 2.0.1; no date tokens, so "last N days"
filtering happens in the facts layer; the service's own searches may add a ``Lookback``'s date floor). Each search
asks for up to 500 results per page; servers may cap the page size lower (the Medplum test server caps at 100),
and the record layer follows ``next`` links up to ``fhir_max_pages``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Protocol
from urllib.parse import quote

PATIENT = "patient"
LABS = "labs"
SYMPTOMS = "symptoms"
CONDITIONS = "conditions"
MEDREQUESTS = "medrequests"
MEDSTATEMENTS = "medstatements"

LOINC = "http://loinc.org"
PAGE = "_count=500"
PATIENT_TOKEN = "{{context.patientId}}"
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Lookback:
    """How far back the rules read what one prefetch key holds: nothing dated before ``since`` matters.

    ``since`` already holds the facts layer's time-zone margin (``first_day_within``). With ``search``, the
    service's own searches for the key ask the server for ``date=ge<since>`` (Observation.effective[x]), and a
    prefetched Bundle of the key that has a ``next`` link is completed by such a search instead of its pages.
    """

    since: date
    search: bool

    def narrowed(self, path: str) -> str:
        """``path`` with the date floor when the key is searched with it."""
        if not self.search:
            return path
        return f"{path}{'&' if '?' in path else '?'}date=ge{self.since.isoformat()}"


class CodeLike(Protocol):
    @property
    def system(self) -> str: ...

    @property
    def code(self) -> str: ...


class PrefetchTerminology(Protocol):
    """What the templates need from ``cds_service.facts.terminology.Terminology``."""

    def lab_loinc_codes(self) -> Iterable[str]:
        """Bare LOINC codes of every lab analyte the rules read."""

    def symptom_observation_codes(self) -> Iterable[CodeLike]:
        """(system, code) of the Observation codes that record muscle symptoms."""


def build_prefetch_templates(
    terminology: PrefetchTerminology, site_lab_codes: Iterable[CodeLike] = ()
) -> dict[str, str]:
    """The prefetch templates, keyed by prefetch key, in a fixed order; the labs key also asks for the local lab
    codes a site maps onto LOINC (``concept_maps_dir``)."""
    loinc = sorted({f"{LOINC}|{code}" for code in terminology.lab_loinc_codes()})
    labs = ",".join([*loinc, *sorted({f"{c.system}|{c.code}" for c in site_lab_codes})])
    symptoms = ",".join(sorted({f"{c.system}|{c.code}" for c in terminology.symptom_observation_codes()}))
    patient = PATIENT_TOKEN
    return {
        PATIENT: f"Patient/{patient}",
        LABS: f"Observation?patient={patient}&code={labs}&_sort=-date&{PAGE}",
        SYMPTOMS: f"Observation?patient={patient}&code={symptoms}&_sort=-date&{PAGE}",
        CONDITIONS: f"Condition?patient={patient}&{PAGE}",
        MEDREQUESTS: f"MedicationRequest?patient={patient}&status=active,on-hold"
        f"&_include=MedicationRequest:medication&{PAGE}",
        MEDSTATEMENTS: f"MedicationStatement?patient={patient}&_include=MedicationStatement:medication&{PAGE}",
    }


def fill(template: str, context: Mapping[str, object]) -> str | None:
    """The template with each ``{{context.X}}`` replaced by the URL-encoded value; None if a token has no value."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = context.get(match.group(1))
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return quote(found, safe="")

    filled = _TOKEN.sub(value, template)
    return None if missing else filled


def resource_type_of(template: str) -> str:
    """The resource type a template reads or searches (``Observation`` for ``Observation?...``)."""
    return re.split(r"[/?]", template, maxsplit=1)[0]
