"""The Patient resource → sex and birth date (the only demographics the rules use)."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from .fhir import moment

SEXES = frozenset({"female", "male", "other", "unknown"})


def demographics(patients: Iterable[Any], patient_id: str) -> tuple[str | None, date | None]:
    """(sex, birth date) from the Patient with ``patient_id`` (else the first Patient); None where unknown.

    ``sex`` is the administrative gender code; ``other``/``unknown`` are kept as sent (default reference ranges
    by sex then fall back to the range for unknown sex).
    """
    candidates = [p for p in patients if isinstance(p, dict)]
    patient = next((p for p in candidates if p.get("id") == patient_id), candidates[0] if candidates else None)
    if patient is None:
        return None, None
    gender = patient.get("gender")
    sex = gender.strip().lower() if isinstance(gender, str) and gender.strip().lower() in SEXES else None
    born = moment(patient.get("birthDate"))
    return sex, born.date() if born else None
