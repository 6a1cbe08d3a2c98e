"""FHIR R4 validity of the resources the rule set's suggestions create, checked when the rules load (and by
``cds-service rules check``), so a rule whose suggestion would send an EHR an invalid resource never ships.

Each resource is built by the card builder itself (:func:`cds_service.rules.cards.service_request`) for a
placeholder patient and validated with the fhir.resources models. fhir.resources 8 ships R5 as its top-level
modules and R4B (no R4) as a subpackage; ServiceRequest is the same in R4 and R4B, so the R4B model stands in.
"""
from __future__ import annotations

from functools import cache

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from .cards import service_request
from .model import Coding

PLACEHOLDER_PATIENT = "rule-check"  # the patient id of the request, unknown when rules load
_ONE_LINE = str.maketrans({"\r": "\\r", "\n": "\\n", "\t": "\\t"})  # pydantic quotes patterns holding these


@cache
def order_problem(coding: Coding) -> str | None:
    """Why the draft ServiceRequest that orders ``coding`` is not valid FHIR R4, as one line starting with the
    path inside the resource; None when it is valid. Cached: each distinct test is built and validated once."""
    resource = service_request(PLACEHOLDER_PATIENT, coding.system, coding.code, coding.display)
    try:
        ServiceRequest.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {errors[0]['msg']}{more}".translate(_ONE_LINE)
    return None
