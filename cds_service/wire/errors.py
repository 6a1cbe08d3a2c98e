"""Errors the service answers with, each with an HTTP status, a stable code and a FHIR OperationOutcome body.

Every ``diagnostics`` text starts with a code such as ``CDS-0007`` so logs, tests and integrators can refer to
one failure precisely; ``tests/test_errors.py`` proves the codes are unique. Add a new code at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str  # CDS-nnnn
    status: int
    issue_code: str  # FHIR issue-type code
    text: str


MALFORMED_JSON = ErrorKind("CDS-0001", 400, "structure", "The request body is not valid JSON.")
NOT_AN_OBJECT = ErrorKind("CDS-0002", 400, "structure", "The request body must be a JSON object.")
INVALID_REQUEST = ErrorKind("CDS-0003", 400, "invalid", "The CDS Hooks request is not valid.")
HOOK_MISMATCH = ErrorKind("CDS-0004", 400, "invalid", "The request's hook does not match this service.")
INVALID_CONTEXT = ErrorKind("CDS-0005", 400, "required", "The hook context is not valid for this hook.")
AUTHORIZATION_WITHOUT_SERVER = ErrorKind(
    "CDS-0006", 400, "invalid", "fhirAuthorization was sent without fhirServer."
)
UNKNOWN_SERVICE = ErrorKind("CDS-0007", 404, "not-found", "No CDS service has this id.")
NOT_FOUND = ErrorKind("CDS-0008", 404, "not-found", "Nothing is served at this path.")
METHOD_NOT_ALLOWED = ErrorKind("CDS-0009", 405, "not-supported", "This method is not allowed here.")
TOO_LARGE = ErrorKind("CDS-0010", 413, "too-costly", "The request body is larger than this service accepts.")
UNSUPPORTED_MEDIA_TYPE = ErrorKind("CDS-0011", 415, "not-supported", "The request body must be JSON.")
RECORD_UNAVAILABLE = ErrorKind(
    "CDS-0012", 412, "not-found", "The patient record could not be obtained from prefetch or the FHIR server."
)
FHIR_SERVER_NOT_ALLOWED = ErrorKind(
    "CDS-0013", 412, "security", "The fhirServer is not one this service is allowed to call."
)
UNAUTHORIZED = ErrorKind("CDS-0014", 401, "login", "Authentication is required.")
INVALID_FEEDBACK = ErrorKind("CDS-0015", 400, "invalid", "The feedback is not valid.")
TOO_DEEP = ErrorKind("CDS-0016", 400, "too-costly", "The request body is nested too deeply.")
TOO_MANY_ENTRIES = ErrorKind("CDS-0017", 413, "too-costly", "The prefetch holds more entries than accepted.")
STORE_UNAVAILABLE = ErrorKind("CDS-0018", 503, "transient", "The feedback store is not reachable.")
INTERNAL = ErrorKind("CDS-0019", 500, "exception", "The service failed to answer; the failure is logged.")
DEADLINE = ErrorKind("CDS-0020", 412, "timeout", "The patient record could not be obtained in time.")
HTTP_ERROR = ErrorKind("CDS-0021", 400, "processing", "The HTTP request could not be processed.")
INVALID_PERIOD = ErrorKind("CDS-0022", 400, "invalid", "The analytics period is not valid.")

ALL_KINDS: tuple[ErrorKind, ...] = tuple(v for v in globals().values() if isinstance(v, ErrorKind))


class CdsError(Exception):
    """An error answered to the client. ``detail`` is safe to show; it never holds tokens or patient data."""

    def __init__(self, kind: ErrorKind, detail: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(f"{kind.code} {detail or kind.text}")
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.kind.status


def operation_outcome(kind: ErrorKind, detail: str | None = None) -> dict[str, Any]:
    """The FHIR R4 OperationOutcome body for an error."""
    diagnostics = f"{kind.code}: {kind.text}"
    if detail:
        diagnostics += f" {detail}"
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error" if kind.status < 500 else "fatal",
                "code": kind.issue_code,
                "diagnostics": diagnostics,
            }
        ],
    }
