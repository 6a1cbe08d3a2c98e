"""The record layer: the patient's FHIR data for one hook call, from prefetch first and the FHIR server second."""
from .model import PatientRecord
from .obtain import obtain_record
from .settings import RecordSettings
from .templates import build_prefetch_templates

__all__ = ["PatientRecord", "RecordSettings", "build_prefetch_templates", "obtain_record"]
