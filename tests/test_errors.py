"""Error codes are unique and every error body is an OperationOutcome."""
from __future__ import annotations

from cds_service.wire.errors import ALL_KINDS, operation_outcome


def test_error_codes_are_unique_and_well_formed():
    codes = [kind.code for kind in ALL_KINDS]
    assert len(codes) == len(set(codes))
    assert all(code.startswith("CDS-") and len(code) == 8 for code in codes)


def test_operation_outcome_shape():
    for kind in ALL_KINDS:
        body = operation_outcome(kind, "more")
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["diagnostics"].startswith(kind.code + ": ")
        assert body["issue"][0]["severity"] == ("fatal" if kind.status >= 500 else "error")
