"""Which prefetch keys would hold a resource: the service's own prefetch templates, read as a FHIR server would.

A template such as ``Observation?patient={{context.patientId}}&code=http://loinc.org|2823-3,...&_count=500``
becomes a test on one resource: its type, each search parameter the templates use (``code`` matches any coding
of ``Resource.code``; ``status`` matches ``Resource.status``), and ``_include=X:medication`` (the Medications its
resources reference join the same key). ``_sort`` and ``_count`` change order and paging, not content. A template
with any other parameter is refused when the scan starts, so a new template is never silently half-applied.
A hook whose context names a resource (encounter-start's ``encounterId``) routes that type under the context
field's name: such a key is no prefetch key (scan/hooks.py picks the resource from them).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..record.templates import PATIENT_TOKEN, resource_type_of

IGNORED = {"patient", "_sort", "_count"}  # the patient is the group; order and paging do not change content
MEDICATION_REFERENCE = "medicationReference"


@dataclass(frozen=True, slots=True)
class KeyTest:
    """One prefetch key's template as a test on a resource."""

    key: str
    resource_type: str
    codes: frozenset[tuple[str, str]] | None  # (system, code); None: any code
    statuses: frozenset[str] | None  # None: any status
    includes_medications: bool
    single: bool  # a read (``Patient/{{context.patientId}}``), not a search: the value is the resource itself
    context: bool = False  # the key is a context field (``encounterId``), not a prefetch key


class TemplateNotSupported(Exception):
    """A prefetch template uses a search parameter the scan cannot apply to a resource."""


@dataclass(frozen=True, slots=True)
class Router:
    tests: tuple[KeyTest, ...]

    @classmethod
    def of(cls, templates: Mapping[str, str], context: Mapping[str, str] | None = None) -> Router:
        """The tests of the prefetch ``templates``, and of the ``context`` fields (field -> resource type)."""
        fields = tuple(
            KeyTest(name, kind, None, None, includes_medications=False, single=False, context=True)
            for name, kind in (context or {}).items()
        )
        return cls(tuple(_key_test(key, template) for key, template in templates.items()) + fields)

    @property
    def resource_types(self) -> frozenset[str]:
        """Every resource type a template reads (Medication too, when a template includes it)."""
        types = {t.resource_type for t in self.tests}
        return frozenset(types | ({"Medication"} if any(t.includes_medications for t in self.tests) else set()))

    def keys_of(self, resource: Mapping[str, Any]) -> list[KeyTest]:
        """The keys whose template would return ``resource`` (searched for its patient)."""
        kind = resource.get("resourceType")
        return [t for t in self.tests if t.resource_type == kind and _matches(t, resource)]

    def single_keys(self) -> frozenset[str]:
        return frozenset(t.key for t in self.tests if t.single)

    def search_keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.tests if not t.single and not t.context)


def _key_test(key: str, template: str) -> KeyTest:
    kind = resource_type_of(template)
    if "?" not in template:
        if template != f"{kind}/{PATIENT_TOKEN}":
            raise TemplateNotSupported(f"prefetch {key}: {template} is a read the scan cannot apply")
        return KeyTest(key, kind, None, None, includes_medications=False, single=True)
    codes: frozenset[tuple[str, str]] | None = None
    statuses: frozenset[str] | None = None
    includes = False
    for name, value in parse_qsl(urlsplit(template).query, keep_blank_values=True):
        if name in IGNORED:
            continue
        if name == "code":
            codes = frozenset(tuple(token.split("|", 1)) for token in value.split(","))  # type: ignore[misc]
        elif name == "status":
            statuses = frozenset(value.split(","))
        elif name == "_include" and value == f"{kind}:medication":
            includes = True
        else:
            raise TemplateNotSupported(f"prefetch {key}: the search parameter {name} cannot be applied by the scan")
    return KeyTest(key, kind, codes, statuses, includes, single=False)


def _matches(test: KeyTest, resource: Mapping[str, Any]) -> bool:
    if test.statuses is not None and resource.get("status") not in test.statuses:
        return False
    if test.codes is None:
        return True
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        return False
    return any(
        isinstance(c, dict) and (c.get("system"), c.get("code")) in test.codes for c in codings
    )


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The id of the patient a resource belongs to: ``Patient.id``, else its ``subject`` or ``patient`` reference
    (``Patient/123``, an absolute URL ending in ``Patient/123``, or ``urn:uuid:...`` as some exporters write)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    for name in ("subject", "patient"):
        holder = resource.get(name)
        reference = holder.get("reference") if isinstance(holder, dict) else None
        if isinstance(reference, str):
            return _patient_id(reference)
    return None


def _patient_id(reference: str) -> str | None:
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:"):] or None
    head, found, tail = reference.rpartition("Patient/")
    if not found or (head and not head.endswith("/")):
        return None
    return tail.split("/", 1)[0] or None


def medication_id(resource: Mapping[str, Any]) -> str | None:
    """The id of the Medication a MedicationRequest or MedicationStatement references in the export (relative
    ``Medication/<id>``); contained ones (``#id``) travel with the resource and need no join."""
    holder = resource.get(MEDICATION_REFERENCE)
    reference = holder.get("reference") if isinstance(holder, dict) else None
    if isinstance(reference, str) and reference.startswith("Medication/"):
        return reference.split("/", 2)[1] or None
    return None
