"""Long random patient histories, as a FHIR server would hold them, for tests that compare two ways of reading."""
from __future__ import annotations

import random
from datetime import datetime, timedelta

from cds_service.record.model import PatientRecord

# (LOINC, UCUM unit, low, high) around each analyte's usual range, so that some values fall outside it
ANALYTES = [
    ("2823-3", "mmol/L", 2.6, 5.6), ("19123-9", "mg/dL", 1.0, 2.8), ("2157-6", "U/L", 30, 3000),
    ("3016-3", "m[IU]/L", 0.1, 9.0), ("17861-6", "mg/dL", 7.2, 11.0), ("1751-7", "g/dL", 2.8, 5.2),
    ("2951-2", "mmol/L", 126, 148), ("2160-0", "mg/dL", 0.6, 2.4), ("33914-3", "mL/min/{1.73_m2}", 20, 100),
]


def long_history(seed: int, now: datetime) -> PatientRecord:
    """Eight years of random labs (some out of range), cramps as a Condition and as Observations (some older
    than any window), none, one or both of atorvastatin and furosemide: a patient meant to fire rules."""
    rng = random.Random(seed)
    labs = []
    for serial in range(400):
        loinc, unit, low, high = rng.choice(ANALYTES)
        when = now - timedelta(days=rng.uniform(0, 8 * 365))
        labs.append({
            "resourceType": "Observation", "id": f"lab-{serial}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": round(rng.uniform(low, high), 2), "system": "http://unitsofmeasure.org",
                              "code": unit, "unit": unit},
        })
    cramp = {"resourceType": "Condition", "id": "cramp", "code": {"coding": [{"system": "http://snomed.info/sct",
             "code": "55300003"}]}, "clinicalStatus": {"coding": [{"code": "active"}]},
             "onsetDateTime": (now - timedelta(days=10)).isoformat()}
    symptoms = [{"resourceType": "Observation", "id": f"sym-{serial}", "status": "final",
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
                 "effectiveDateTime": (now - timedelta(days=rng.uniform(0, 500))).isoformat()}
                for serial in range(3)]  # cramps recorded as Observations too, some older than any window
    drugs = [("617311", "atorvastatin 40 MG Oral Tablet"), ("313988", "furosemide 40 MG Oral Tablet")]
    orders = [{"resourceType": "MedicationRequest", "id": f"mr-{code}", "status": "active", "intent": "order",
               "authoredOn": (now - timedelta(days=200)).isoformat(),
               "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                         "code": code, "display": text}], "text": text}}
              for code, text in rng.sample(drugs, rng.randint(0, 2))]
    patient = {"resourceType": "Patient", "id": "p1", "gender": rng.choice(["male", "female"]), "birthDate": "1950-01-01"}
    return PatientRecord("p1", {"Patient": [patient], "Observation": labs + symptoms, "Condition": [cramp],
                                "MedicationRequest": orders})
