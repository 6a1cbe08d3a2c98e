"""The patient facts: what the rules see. Plain typed data, built leniently from the patient record.

Vocabulary (names are defined by the value sets in ``rules/valuesets/``, never invented in code):

* lab ``analyte``: potassium, sodium, magnesium, calcium, calcium_ionized, calcium_corrected (reported, or derived
  from calcium and albumin), calcium_uncorrected (total calcium without a same-day albumin), albumin, ck, tsh,
  free_t4, vitamin_d, vitamin_b12, glucose, egfr, creatinine, bun, ferritin, hba1c, body_temperature, oxygen_saturation
* medication ``classes``: statin, loop_diuretic, thiazide_diuretic, potassium_sparing_diuretic, beta2_agonist,
  methylxanthine, systemic_corticosteroid, statin_interacting, proton_pump_inhibitor, metformin, levothyroxine,
  potassium_supplement, magnesium_supplement, mineralocorticoid_antagonist, ace_inhibitor, arb, trimethoprim,
  potassium_wasting_corticosteroid, insulin, sulfonylurea, anticoagulant
* finding ``concept``: cramp, spasm, myalgia, muscle_weakness, statin_myopathy, rhabdomyolysis, dyspnea,
  dizziness, fever, neck_stiffness, paresthesia, numbness, cellulitis, dvt, limb_swelling, limb_erythema,
  leg_pain, chest_pain, fasciculation, muscle_wasting, malignancy, vte_history, myoglobinuria, seizure, smoker, pad,
  hypothyroidism, ckd, ckd_stage_3_5, dialysis, heart_failure, diabetes, hypoglycemia, dehydration, hypokalemia,
  hyponatremia, hypomagnesemia, hypocalcemia, vitamin_d_deficiency, vitamin_b12_deficiency,
  thyroid_parathyroid_surgery, cirrhosis
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str = ""


@dataclass(frozen=True, slots=True)
class LabResult:
    """One lab value in the analyte's canonical unit, with the reference range that applies to it."""

    analyte: str
    value: float
    unit: str  # canonical unit of the analyte, e.g. "mmol/L", "mg/dL", "U/L"
    effective: datetime  # timezone-aware
    code: Coding  # the LOINC coding that identified the analyte
    ref_low: float | None  # canonical unit
    ref_high: float | None  # canonical unit
    ref_from_resource: bool  # False when the built-in default range was used
    interpretation: tuple[str, ...]  # v3 ObservationInterpretation codes as sent, e.g. ("L",)
    reported: str  # the value as reported, e.g. "1.4 mg/dL", for card text
    resource: str  # "Observation/<id>"
    comparator: str = ""  # "<", "<=", ">" or ">=" when the lab reported a bound ("<8 ng/mL"); value is the bound

    @property
    def times_uln(self) -> float | None:
        """The value as a multiple of the upper reference limit (None without one)."""
        if not self.ref_high:
            return None
        return self.value / self.ref_high


@dataclass(frozen=True, slots=True)
class MedicationUse:
    """One medication the patient takes, is ordered, or is being ordered in this hook call."""

    name: str  # best human-readable name: code display, text, or Medication.code text
    ingredients: frozenset[str]  # lower-case ingredient names, e.g. {"atorvastatin"}
    classes: frozenset[str]  # e.g. {"statin"}
    kind: Literal["request", "statement", "draft"]  # "draft": from context.draftOrders
    status: str
    selected: bool  # order-select: in context.selections; order-sign: every draft order
    date: datetime | None  # authoredOn / effective start / dateAsserted
    reference: str  # "MedicationRequest/<id>" or "MedicationStatement/<id>"
    codes: tuple[Coding, ...] = ()
    ended: datetime | None = None  # history only: when a stopped or completed course ended, if recorded
    as_needed: bool | None = None  # True: every dosage is as needed (PRN); False: a regular dosage; None: no dosage


@dataclass(frozen=True, slots=True)
class Finding:
    """A symptom, sign or diagnosis from a Condition or an Observation, mapped to a concept."""

    concept: str
    display: str
    source: Literal["Condition", "Observation"]
    code: Coding
    status: str  # Condition clinicalStatus code, or Observation status
    onset: datetime | None
    recorded: datetime | None
    resource: str  # "Condition/<id>" or "Observation/<id>"
    abated: datetime | None = None  # a Condition's abatementDateTime (or abatementPeriod end)
    category: str = ""  # a Condition's problem-list-item or encounter-diagnosis (facts.findings), else ""

    @property
    def date(self) -> datetime | None:
        """The date that best says when the finding was documented."""
        return self.onset or self.recorded


@dataclass(slots=True)
class PatientFacts:
    """Everything the rules may use about one patient at one evaluation time (``now``)."""

    patient_id: str
    now: datetime
    sex: str | None = None
    birth_date: date | None = None
    # newest first per analyte; build_facts gives lazy sequences (facts.labs.LabSeries), tests may give tuples
    labs: Mapping[str, Sequence[LabResult]] = field(default_factory=dict)
    medications: tuple[MedicationUse, ...] = ()
    findings: tuple[Finding, ...] = ()  # only current ones: active, not refuted, not resolved long ago
    # Every recorded course, current or not (requests and statements, drafts excluded), with start and end dates;
    # and every Condition finding whatever its clinical status, with onset and abatement: for timing criteria.
    medication_history: tuple[MedicationUse, ...] = ()
    finding_history: tuple[Finding, ...] = ()
    incomplete: frozenset[str] = frozenset()  # data groups that could not be obtained in full
    warnings: tuple[str, ...] = ()

    def latest(self, analyte: str) -> LabResult | None:
        results = self.labs.get(analyte)
        return results[0] if results else None

    def medications_in(self, classes: set[str] | frozenset[str]) -> tuple[MedicationUse, ...]:
        return tuple(m for m in self.medications if m.classes & classes)

    def findings_of(self, concepts: set[str] | frozenset[str]) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.concept in concepts)
