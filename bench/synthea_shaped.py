"""A patient's record shaped like Synthea's R4 output, for the population scan's benchmark.

Synthea's patients are large: the 16 Synthea 2025 patients of ../shared/synthea (three years of history) hold a
median of 201 resources of the types the scan reads (122 Observations, 22 Conditions, 21 MedicationRequests) and
248 KB of JSON; an Observation is about 0.9 KB, a Condition 1.1 KB, a MedicationRequest 1.2 KB. This module writes
records of that size and make-up, in Synthea's layout (profiles, category and code displays, code text, an
encounter reference, ``issued``, UCUM quantities, the blood pressure panel's components), over three years before
``now``: a yearly wellness visit (vital signs, metabolic and lipid panels, eGFR, HbA1c, two questionnaires) and
four other visits a year (vital signs at half of them, a comprehensive metabolic panel at a quarter), social
findings recorded at each wellness visit, past and chronic Conditions, the chronic drugs of those Conditions
renewed at the wellness visits and half the others, and a few short courses of analgesics. The codes, displays
and value ranges (the 10th to 90th percentile) are those found in those files; values fall outside that range for
about one result in twenty. No cramp or spasm is ever written here: the benchmark adds those from its fixtures.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROFILE = "http://hl7.org/fhir/us/core/StructureDefinition/"

Quantity = tuple[str, str, str, float, float]  # LOINC code, display, UCUM unit, 10th and 90th percentile
VITALS: list[Quantity] = [
    ("29463-7", "Body Weight", "kg", 73, 97.6),
    ("8302-2", "Body Height", "cm", 161.4, 185.6),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "{score}", 1, 3),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 27.2, 31.6),
    ("8867-4", "Heart rate", "/min", 62, 98),
    ("9279-1", "Respiratory rate", "/min", 12, 16),
]
BLOOD_PRESSURE = ("85354-9", "Blood pressure panel with all children optional",
                  [("8462-4", "Diastolic Blood Pressure", 70, 90), ("8480-6", "Systolic Blood Pressure", 105, 145)])
METABOLIC_BLOOD: list[Quantity] = [
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 67.2, 95.5),
    ("6299-2", "Urea nitrogen [Mass/volume] in Blood", "mg/dL", 8.9, 18.8),
    ("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL", 0.5, 3.2),
    ("49765-1", "Calcium [Mass/volume] in Blood", "mg/dL", 8.7, 10.0),
    ("2947-0", "Sodium [Moles/volume] in Blood", "mmol/L", 138.2, 143.0),
    ("6298-4", "Potassium [Moles/volume] in Blood", "mmol/L", 3.8, 5.0),
    ("2069-3", "Chloride [Moles/volume] in Blood", "mmol/L", 101.8, 110.3),
    ("20565-8", "Carbon dioxide, total [Moles/volume] in Blood", "mmol/L", 20.7, 28.2),
]
METABOLIC_SERUM: list[Quantity] = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 69.0, 92.5),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 8.8, 17.8),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 2.5),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.9, 9.9),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.7, 143.8),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.9, 5.0),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 101.7, 110.0),
    ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 21.1, 28.3),
]
LIVER_AND_PROTEIN: list[Quantity] = [
    ("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 6.8, 8.2),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 4.0, 5.2),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.4, 1.2),
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 42.1, 124.5),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 8.5, 41.0),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 6.6, 35.8),
]
WELLNESS_LABS: list[Quantity] = [
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 135.2, 282.4),
    ("2571-8", "Triglycerides", "mg/dL", 106.7, 164.2),
    ("18262-6", "Low Density Lipoprotein Cholesterol", "mg/dL", 56.4, 206.1),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 33.5, 64.8),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by "
                "Creatinine-based formula (MDRD)", "mL/min/{1.73_m2}", 36.0, 146.8),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 3.0, 6.3),
]
SURVEYS: list[Quantity] = [
    ("55758-7", "Patient Health Questionnaire 2 item (PHQ-2) total score [Reported]", "{score}", 0, 2),
    ("70274-6", "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]", "{score}", 0, 8),
]
SOCIAL = [("73595000", "Stress (finding)"), ("160903007", "Full-time employment (finding)"),
          ("224299000", "Received higher education (finding)"), ("422650009", "Social isolation (finding)"),
          ("741062008", "Not in labor force (finding)"), ("160904001", "Part-time employment (finding)"),
          ("423315002", "Limited social contact (finding)"), ("73438004", "Unemployed (finding)")]
PAST = [("66383009", "Gingivitis (disorder)"), ("40055000", "Chronic sinusitis (disorder)"),
        ("271737000", "Anemia (disorder)"), ("37320007", "Loss of teeth (disorder)")]
MEDICATION_REVIEW = ("314529007", "Medication review due (situation)")
# a chronic Condition, how common it is, and the drugs Synthea treats it with (one chosen per patient)
CHRONIC = [
    ("59621000", "Essential hypertension (disorder)", 0.30,
     [("310798", "Hydrochlorothiazide 25 MG Oral Tablet"), ("314076", "lisinopril 10 MG Oral Tablet"),
      ("308136", "amLODIPine 2.5 MG Oral Tablet")]),
    ("55822004", "Hyperlipidemia (disorder)", 0.15,
     [("314231", "Simvastatin 10 MG Oral Tablet"), ("312961", "Simvastatin 20 MG Oral Tablet")]),
    ("714628002", "Prediabetes (finding)", 0.15,
     [("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet")]),
    ("162864005", "Body mass index 30+ - obesity (finding)", 0.15, []),
    ("414545008", "Ischemic heart disease (disorder)", 0.06,
     [("243670", "aspirin 81 MG Oral Tablet"), ("309362", "Clopidogrel 75 MG Oral Tablet")]),
]
ACUTE = [("313782", "Acetaminophen 325 MG Oral Tablet"), ("849574", "Naproxen sodium 220 MG Oral Tablet"),
         ("835603", "tramadol hydrochloride 50 MG Oral Tablet")]
YEARS, OTHER_VISITS_A_YEAR = 3, 4


class Writer:
    """Resources of one patient, with ids and times drawn from ``rng``."""

    def __init__(self, rng: random.Random, patient_id: str) -> None:
        self.rng, self.patient_id = rng, patient_id
        self.subject = {"reference": f"Patient/{patient_id}"}

    def uuid(self) -> str:
        text = f"{self.rng.getrandbits(128):032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def value(self, low: float, high: float) -> float:
        spread = high - low
        if self.rng.random() < 0.05:
            return round(self.rng.uniform(max(0.0, low - spread / 2), high + spread / 2), 1)
        return round(self.rng.uniform(low, high), 1)

    def observation(self, category: str, code: str, display: str, encounter: str, at: datetime,
                    **value: Any) -> dict[str, Any]:
        profile = {"laboratory": "us-core-observation-lab", "vital-signs": "us-core-vital-signs"}.get(
            category, "us-core-observation-survey")
        return {
            "resourceType": "Observation", "id": self.uuid(), "meta": {"profile": [PROFILE + profile]},
            "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": category,
                                      "display": category.replace("-", " ").title()}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self.subject, "encounter": {"reference": f"Encounter/{encounter}"},
            "effectiveDateTime": _instant(at), "issued": _instant(at, issued=True), **value,
        }

    def quantity(self, category: str, item: Quantity, encounter: str, at: datetime) -> dict[str, Any]:
        code, display, unit, low, high = item
        quantity = {"value": self.value(low, high), "unit": unit, "system": UCUM, "code": unit}
        return self.observation(category, code, display, encounter, at, valueQuantity=quantity)

    def blood_pressure(self, encounter: str, at: datetime) -> dict[str, Any]:
        code, display, parts = BLOOD_PRESSURE
        components = [{"code": {"coding": [{"system": LOINC, "code": c, "display": d}], "text": d},
                       "valueQuantity": {"value": round(self.rng.uniform(low, high)), "unit": "mm[Hg]",
                                         "system": UCUM, "code": "mm[Hg]"}} for c, d, low, high in parts]
        return self.observation("vital-signs", code, display, encounter, at, component=components)

    def condition(self, code: str, display: str, onset: datetime, abated: datetime | None) -> dict[str, Any]:
        status = "resolved" if abated else "active"
        resource = {
            "resourceType": "Condition", "id": self.uuid(),
            "meta": {"profile": [PROFILE + "us-core-condition-encounter-diagnosis"]},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": status}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}],
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "subject": self.subject, "encounter": {"reference": f"Encounter/{self.uuid()}"},
            "onsetDateTime": _instant(onset), "recordedDate": _instant(onset),
        }
        if abated:
            resource["abatementDateTime"] = _instant(abated)
        return resource

    def medication_request(self, code: str, display: str, at: datetime, status: str) -> dict[str, Any]:
        return {
            "resourceType": "MedicationRequest", "id": self.uuid(),
            "meta": {"profile": [PROFILE + "us-core-medicationrequest"]},
            "status": status, "intent": "order",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                                      "code": "community", "display": "Community"}], "text": "Community"}],
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}],
                                          "text": display},
            "subject": self.subject, "encounter": {"reference": f"Encounter/{self.uuid()}"},
            "authoredOn": _instant(at),
            "requester": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999",
                          "display": "Dr. Generated Clinician"},
            "dosageInstruction": [{"sequence": 1, "timing": {"repeat": {"frequency": 1, "period": 1,
                                                                         "periodUnit": "d"}},
                                   "asNeededBoolean": False}],
        }


def patient(rng: random.Random, patient_id: str) -> dict[str, Any]:
    gender = rng.choice(["male", "female"])
    return {
        "resourceType": "Patient", "id": patient_id,
        "meta": {"profile": [PROFILE + "us-core-patient"]},
        "extension": [{"url": PROFILE + "us-core-birthsex", "valueCode": "M" if gender == "male" else "F"}],
        "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": patient_id},
                       {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "MR", "display": "Medical Record Number"}],
                                 "text": "Medical Record Number"},
                        "system": "http://hospital.smarthealthit.org", "value": patient_id}],
        "name": [{"use": "official", "family": f"Family{rng.randint(100, 999)}",
                  "given": [f"Given{rng.randint(100, 999)}"]}],
        "telecom": [{"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
                     "use": "home"}],
        "gender": gender,
        "birthDate": f"{rng.randint(1935, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "address": [{"line": [f"{rng.randint(1, 999)} Generated Street"], "city": "Springfield", "state": "MA",
                     "postalCode": "01101", "country": "US"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                      "code": "M", "display": "Married"}], "text": "Married"},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US",
                                                    "display": "English (United States)"}], "text": "English"}}],
    }


def history(rng: random.Random, patient_id: str, now: datetime) -> list[dict[str, Any]]:
    """One patient's Patient resource and three years of Synthea-shaped history before ``now``, no cramps."""
    out = Writer(rng, patient_id)
    start = now - timedelta(days=365 * YEARS)
    wellness = [start + timedelta(days=365 * year + rng.randint(0, 364), seconds=rng.randint(28800, 61200))
                for year in range(YEARS)]
    others = [start + timedelta(days=rng.randint(0, 365 * YEARS - 1), seconds=rng.randint(0, 86399))
              for _ in range(YEARS * OTHER_VISITS_A_YEAR)]
    metabolic = rng.choice([METABOLIC_BLOOD, METABOLIC_SERUM])
    resources: list[dict[str, Any]] = [patient(rng, patient_id)]
    for at, is_wellness in sorted([(w, True) for w in wellness] + [(o, False) for o in others]):
        encounter = out.uuid()
        if is_wellness or rng.random() < 0.5:
            resources += [out.quantity("vital-signs", item, encounter, at) for item in VITALS]
            resources.append(out.blood_pressure(encounter, at))
        if is_wellness:
            labs = [*metabolic, *WELLNESS_LABS]
            resources += [out.quantity("laboratory", item, encounter, at) for item in labs]
            resources += [out.quantity("survey", item, encounter, at) for item in SURVEYS]
            resources.append(out.condition(*MEDICATION_REVIEW, at, at + timedelta(days=1)))
            for code, display in rng.sample(SOCIAL, rng.randint(2, 4)):  # recorded again at each wellness visit
                resources.append(out.condition(code, display, at, at + timedelta(days=rng.randint(30, 365))))
        elif rng.random() < 0.25:
            labs = [*metabolic, *LIVER_AND_PROTEIN]
            resources += [out.quantity("laboratory", item, encounter, at) for item in labs]
    for code, display in rng.sample(PAST, rng.randint(1, 4)):
        onset = start - timedelta(days=rng.randint(400, 9000))
        resources.append(out.condition(code, display, onset, onset + timedelta(days=rng.randint(10, 60))))
    for code, display, share, drugs in CHRONIC:
        if rng.random() >= share:
            continue
        resources.append(out.condition(code, display, start - timedelta(days=rng.randint(0, 5000)), None))
        if drugs:
            drug = rng.choice(drugs)
            renewals = sorted([*wellness, *rng.sample(others, len(others) // 2)])  # the last one is active
            resources += [out.medication_request(*drug, at, "active" if at == renewals[-1] else "stopped")
                          for at in renewals]
    for _ in range(rng.randint(2, 8)):
        resources.append(out.medication_request(*rng.choice(ACUTE), rng.choice(others), "completed"))
    return resources


def _instant(at: datetime, *, issued: bool = False) -> str:
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{at.microsecond // 1000:03d}+00:00" if issued else f"{text}+00:00"
