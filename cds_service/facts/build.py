"""PatientRecord → PatientFacts: pure, no I/O; lenient with every resource, never raising on content.

An Observation older than every window the rules use is skipped on its date text (``FactWindows.lab_lookback``).
Each other Observation is routed once, by a dict read of its code: a lab code goes to the lab reader, a symptom
code to the finding reader, anything else is ignored without being parsed further. No fhir.resources model is
built on this path: validating thousands of Observations costs many times the JSON parse (see
``bench/bench_facts.py``), while the readers here look only at the fields the rules use.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..record.model import PatientRecord
from .fhir import READ_ERRORS, guarded, not_a_resource, reference_name
from .findings import FindingReader
from .labs import LabReader
from .medications import MedicationReader, current_medications
from .model import Finding, PatientFacts
from .patient import demographics
from .terminology import Terminology


@dataclass(frozen=True, slots=True)
class FactWindows:
    """How long a record stays current. Chosen defaults, not guideline figures (clinical-reference.md §2, §5)."""

    statement_grace: timedelta = timedelta(days=30)  # MedicationStatement ended at most this long ago
    condition_grace: timedelta = timedelta(days=30)  # resolved/inactive Condition abated at most this long ago
    observation_window: timedelta = timedelta(days=90)  # symptom Observation at most this old
    # Labs dated before this look-back are left out (with symptom Observations older than observation_window,
    # before either is read); None keeps every lab. The service sets it to the longest look-back of any lab
    # criterion in its rule set (RuleSet.lab_lookback): no rule reads an older result.
    lab_lookback: timedelta | None = None

    def observations_read_from(self, now: datetime) -> str:
        """The day (``YYYY-MM-DD``) before which no Observation can matter: older than the labs' look-back and
        the symptoms' window. Observations are judged on their effectiveDateTime text alone, before anything
        else of them is read (here, and by the request parser, cds_service.hookbody). Empty, so that nothing
        is left out, when labs have no look-back."""
        if self.lab_lookback is None:
            return ""
        return first_day_within(now, max(self.lab_lookback, self.observation_window)).isoformat()


DEFAULT_WINDOWS = FactWindows()


LOOKBACK_MARGIN = timedelta(days=2)


def first_day_within(now: datetime, window: timedelta) -> date:
    """The earliest calendar day whose data can still lie within ``window`` before ``now``, when data is judged by
    the date it names alone: ``LOOKBACK_MARGIN`` early, so that no time zone offset puts something inside the window
    out of it by a few hours. Something kept a day too long is harmless: the rules apply their exact windows."""
    return (now - window - LOOKBACK_MARGIN).date()


def build_facts(
    record: PatientRecord, terminology: Terminology, now: datetime, windows: FactWindows = DEFAULT_WINDOWS
) -> PatientFacts:
    """The facts the rules see about ``record``'s patient at ``now`` (naive ``now`` is taken as UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    warnings: list[str] = []
    sex, birth_date = demographics(record.of_type("Patient"), record.patient_id)

    labs = LabReader(terminology, sex, warnings)
    symptoms = FindingReader(terminology, now, windows.condition_grace, windows.observation_window, warnings)
    findings: list[Finding] = []
    take_lab = labs.take
    drop_before = windows.observations_read_from(now)
    for index, observation in enumerate(record.of_type("Observation")):
        if type(observation) is not dict:
            warnings.append(not_a_resource("Observation", index, observation))
            continue
        when = observation.get("effectiveDateTime")
        if type(when) is str and when[:10] < drop_before:
            continue
        try:
            if not take_lab(observation) and symptoms.is_symptom_observation(observation):
                findings.extend(symptoms.observation(observation) or ())
        except READ_ERRORS as exc:
            warnings.append(f"{reference_name(observation)}: could not be read ({type(exc).__name__}: {exc}), skipped")
    for found_in_condition in guarded("Condition", record.of_type("Condition"), symptoms.condition, warnings):
        findings.extend(found_in_condition)

    reader = MedicationReader(terminology, record.of_type("Medication"), warnings)
    medications = current_medications(
        reader,
        record.of_type("MedicationRequest"),
        record.of_type("MedicationStatement"),
        record.draft_orders,
        record.selections,
        now,
        windows.statement_grace,
        warnings,
    )
    return PatientFacts(
        patient_id=record.patient_id,
        now=now,
        sex=sex,
        birth_date=birth_date,
        labs=labs.finish(),
        medications=medications,
        findings=tuple(findings),
        incomplete=record.incomplete,
        warnings=(*record.warnings, *warnings),
    )
