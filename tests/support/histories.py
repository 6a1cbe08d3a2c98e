"""Long random patient histories, as a FHIR server would hold them, for tests that compare two ways of reading."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from cds_service.record.model import PatientRecord

# (LOINC, UCUM unit, low, high) around each analyte's usual range, so that some values fall outside it
ANALYTES = [
    ("2823-3", "mmol/L", 2.6, 5.6), ("19123-9", "mg/dL", 1.0, 2.8), ("2157-6", "U/L", 30, 3000),
    ("3016-3", "m[IU]/L", 0.1, 9.0), ("17861-6", "mg/dL", 7.2, 11.0), ("1751-7", "g/dL", 2.8, 5.2),
    ("2951-2", "mmol/L", 126, 148), ("2160-0", "mg/dL", 0.6, 2.4), ("33914-3", "mL/min/{1.73_m2}", 20, 100),
]
CALCIUM, ALBUMIN = ANALYTES[4], ANALYTES[5]
ZONE_HOURS = [-10, -5, 0, 0, 0, 5.5, 9, 13]


def long_history(seed: int, now: datetime) -> PatientRecord:
    """Eight years of random labs (some out of range), cramps as a Condition and as Observations (some older
    than any window), none, one or both of atorvastatin and furosemide: a patient meant to fire rules."""
    rng = random.Random(seed)
    labs = []
    for serial in range(400):
        when = now - timedelta(days=rng.uniform(0, 8 * 365))
        zone = timezone(timedelta(hours=rng.choice(ZONE_HOURS)))  # the date text is the lab's local day
        # some draws are a calcium with its albumin (corrected calcium pairs them by day)
        drawn = [CALCIUM, ALBUMIN] if rng.random() < 0.15 else [rng.choice(ANALYTES)]
        for part, (loinc, unit, low, high) in enumerate(drawn):
            coding = [{"system": "http://loinc.org", "code": loinc}]
            if rng.random() < 0.2:  # a laboratory's own code first
                coding.insert(0, {"system": "urn:oid:1.2.3.4", "code": loinc})
            if rng.random() < 0.1:  # a second LOINC code of another analyte: the first one names the analyte
                coding.append({"system": "http://loinc.org", "code": rng.choice(ANALYTES)[0]})
            labs.append({
                "resourceType": "Observation", "id": f"lab-{serial}-{part}", "status": "final",
                "code": {"coding": coding},
                "effectiveDateTime": when.astimezone(zone).isoformat(),
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
    gender = rng.choice(["male", "female"])
    patient = {"resourceType": "Patient", "id": "p1", "gender": gender, "birthDate": "1950-01-01"}
    return PatientRecord("p1", {"Patient": [patient], "Observation": labs + symptoms, "Condition": [cramp],
                                "MedicationRequest": orders})
