"""PatientRecord → PatientFacts: pure, no I/O; lenient with every resource, never raising on content.

An Observation older than every window the rules use is skipped on its date text (``FactWindows.lab_lookback``;
the request parser also leaves out each lab result older than its own analyte's window, ``lab_windows``).
Each other Observation is routed once, by a dict read of its code: a lab code goes to the lab reader, a symptom
code to the finding reader, anything else is ignored without being parsed further. No fhir.resources model is
built on this path: validating thousands of Observations costs many times the JSON parse (see
``bench/bench_facts.py``), while the readers here look only at the fields the rules use.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from ..record.model import PatientRecord
from .fhir import READ_ERRORS, guarded, not_a_resource, reference_name
from .findings import FindingReader
from .labs import DERIVED_FROM, LabReader
from .medications import MedicationReader, current_medications, medication_history
from .model import Finding, PatientFacts
from .patient import demographics
from .terminology import Terminology


@dataclass(frozen=True, slots=True)
class FactWindows:
    """How long a record stays current. Chosen defaults, not guideline figures (clinical-reference.md §2, §5)."""

    statement_grace: timedelta = timedelta(days=30)  # MedicationStatement ended at most this long ago
    condition_grace: timedelta = timedelta(days=30)  # resolved/inactive Condition abated at most this long ago
    observation_window: timedelta = timedelta(days=90)  # symptom Observation at most this old
    # an encounter-diagnosis Condition dated at most this long ago (facts.findings: clinical-reference.md §5)
    encounter_diagnosis_window: timedelta = timedelta(days=30)
    # Labs dated before this look-back are left out (with symptom Observations older than observation_window,
    # before either is read); None keeps every lab. The service sets it to the longest look-back of any lab
    # criterion in its rule set (RuleSet.lab_lookback): no rule reads an older result.
    lab_lookback: timedelta | None = None
    # Set by ``for_rules``: the distinct look-backs of the analytes, and for every lab LOINC code the index of its
    # analyte's look-back (the longest of the rules reading it or a result derived from it; the rule set's longest
    # for an analyte no rule reads). The request parser leaves out each lab result older than its own look-back.
    lab_windows: tuple[timedelta, ...] = ()
    lab_window_of: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def for_rules(cls, lab_lookbacks: Mapping[str, timedelta], lab_codes: Mapping[str, str]) -> FactWindows:
        """The windows for a rule set that reads each analyte ``lab_lookbacks[analyte]`` back
        (``RuleSet.lab_lookbacks``); ``lab_codes`` names each LOINC code's analyte (``Terminology.lab_codes``)."""
        if not lab_lookbacks:
            return cls()
        longest = max(lab_lookbacks.values())
        reads = dict(lab_lookbacks)
        for derived, inputs in DERIVED_FROM.items():
            if derived in lab_lookbacks:
                for analyte in inputs:
                    reads[analyte] = max(reads.get(analyte, lab_lookbacks[derived]), lab_lookbacks[derived])
        windows = sorted({longest, *reads.values()})
        return cls(
            lab_lookback=longest,
            lab_windows=tuple(windows),
            lab_window_of={code: windows.index(reads.get(analyte, longest)) for code, analyte in lab_codes.items()},
        )

    def observations_read_from(self, now: datetime) -> str:
        """The day (``YYYY-MM-DD``) before which no Observation can matter: older than the labs' look-back and
        the symptoms' window. Observations are judged on their effectiveDateTime text alone, before anything
        else of them is read (here, and by the request parser, cds_service.wire.request_body). Empty, so that nothing
        is left out, when labs have no look-back."""
        if self.lab_lookback is None:
            return ""
        return first_day_within(now, max(self.lab_lookback, self.observation_window)).isoformat()

    def lab_results_read_from(self, now: datetime) -> LabReadFrom | None:
        """Per lab LOINC code, the day before which no rule reads a result it names; None without lab windows."""
        if not self.lab_windows:
            return None
        days = tuple(first_day_within(now, window).isoformat() for window in self.lab_windows)
        return LabReadFrom(self.lab_window_of, days, max(days))


@dataclass(frozen=True, slots=True)
class LabReadFrom:
    """For one evaluation time: the day (``YYYY-MM-DD``) before which no rule reads a lab result, by the LOINC code
    that makes an Observation a lab (``LabReader.take`` reads it as the analyte of its first lab coding)."""

    window_of: Mapping[str, int]  # every lab LOINC code -> the index of its day in ``days``
    days: tuple[str, ...]
    latest: str  # the latest of ``days``: a result dated on it or after is read whatever its code


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
    symptoms = FindingReader(terminology, now, windows.condition_grace, windows.observation_window,
                             windows.encounter_diagnosis_window, warnings)
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
    history: list[Finding] = []
    for found_in_condition in guarded("Condition", record.of_type("Condition"), symptoms.condition_history, warnings):
        history.extend(found_in_condition)
        if symptoms.is_current(found_in_condition):
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
        medication_history=medication_history(reader, record.of_type("MedicationRequest"),
                                              record.of_type("MedicationStatement")),
        finding_history=(*history, *(f for f in findings if f.source == "Observation")),
        incomplete=record.incomplete,
        warnings=(*record.warnings, *warnings),
    )
