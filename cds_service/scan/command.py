"""``cds-service scan``: one scan from SOURCE to the three files in the output folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson

from ..config import Settings
from ..evaluation import Runtime
from .export import download_export, environment_token, is_url
from .hooks import check_hook, router_for
from .lines import READ, USED
from .output import PSEUDONYM_KEY_ENV, REPORT, SUMMARY, WORKLIST, Output, Pseudonyms, json_bytes
from .pipeline import BLOCK_SIZE, Outcome, Plan, connect, rules_of, run
from .report import render_report
from .smart import SmartClient, SmartTokens
from .source import Source, open_source
from .tally import rule_summary


@dataclass(frozen=True, slots=True)
class ScanRequest:
    source: str  # a folder, or a FHIR server's base URL (Bulk Data $export)
    out: Path
    settings: Settings
    hook: str = "patient-view"
    scheduler: str | None = None
    workers: int | None = None
    pseudonymise: bool = False
    block_size: int | None = None
    progress: bool = False
    group: str | None = None  # $export at Group level
    patient_level: bool = False  # $export at Patient level
    since: str | None = None  # $export's _since
    export_dir: Path | None = None  # where the export's files are saved (default: OUT/export)
    smart: SmartClient | None = None  # with a server: SMART Backend Services (else CDS_SCAN_BEARER_TOKEN, if set)


def scan(request: ScanRequest) -> dict[str, Any]:
    """Run the scan and write its files; return the summary. Raises HookNotScannable for a hook a population
    cannot answer, SourceError when SOURCE is no folder, ExportFailed when SOURCE is a FHIR server whose export
    fails."""
    check_hook(request.hook)
    runtime = Runtime.load(request.settings)
    folder = Path(request.source)
    if is_url(request.source):
        types = router_for(runtime, request.hook).resource_types
        bearer = SmartTokens(request.smart, request.source, types) if request.smart else environment_token
        folder = download_export(request.source, request.export_dir or request.out / "export", types,
                                 group=request.group, patient_level=request.patient_level, since=request.since,
                                 bearer=bearer)
    source = open_source(folder)
    plan = Plan(source, runtime, request.hook, block_size=request.block_size or BLOCK_SIZE)
    with TemporaryDirectory(prefix="cds-scan-") as spool:
        with connect(request.scheduler, request.workers) as client:
            outcome = run(plan, client, Path(spool), progress=request.progress)
        return _write(request, runtime, _files(source), outcome)


def _files(source: Source) -> dict[str, Any]:
    return {
        "files_read": [Path(f.path).name for f in source.files],
        "files_skipped": source.skipped_files,
        "export_errors": source.export_errors,
    }


def _write(request: ScanRequest, runtime: Runtime, files: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    output = Output(request.out)
    pseudonym = Pseudonyms() if request.pseudonymise else None

    def lines() -> Any:
        for row in outcome.rows():
            if pseudonym is not None:
                row["patient"] = pseudonym(row["patient"])
                if "encounter" in row:
                    row["encounter"] = pseudonym(row["encounter"])
            yield orjson.dumps(row) + b"\n"

    try:
        count, digest = output.write_lines(WORKLIST, lines())
        summary = _summary(request, runtime, files, outcome)
        summary["worklist"] = {"lines": count, "sha256": digest}
        if pseudonym is not None:
            summary["pseudonym_key"] = PSEUDONYM_KEY_ENV if pseudonym.from_environment else "random, this run only"
        output.write_bytes(REPORT, render_report(summary).encode())
        output.write_bytes(SUMMARY, json_bytes(summary))
        output.commit()
    except BaseException:
        output.discard()
        raise
    return summary


def _summary(request: ScanRequest, runtime: Runtime, files: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    tally, resources = outcome.tally, outcome.resources
    not_evaluated = sum(tally.not_evaluated.values())
    scanned = tally.patients - not_evaluated
    cards = sum(tally.cards.values())
    by_indicator: dict[str, int] = {}
    for (_rule, indicator), n in sorted(tally.cards.items()):
        by_indicator[indicator] = by_indicator.get(indicator, 0) + n
    skipped = {reason: n for reason, n in sorted(resources.items()) if reason not in (READ, USED)}
    return {
        "now": runtime.now().isoformat(),
        "hook": request.hook,
        "source": request.source,
        "pseudonymised": request.pseudonymise,
        "patients": {
            "scanned": scanned,
            "with_cards": scanned - tally.cards_per_patient.get(0, 0),
            "without_patient_resource": tally.without_patient_resource,
            "not_evaluated": dict(sorted(tally.not_evaluated.items())),
        },
        "cards": {
            "total": cards,
            "per_1000_patients": round(1000 * cards / scanned, 2) if scanned else 0.0,
            "by_indicator": by_indicator,
        },
        "cards_per_patient": {str(k): n for k, n in sorted(tally.cards_per_patient.items())},
        "rules": rule_summary(tally, rules_of(runtime, request.hook)),
        "resources": {"read": resources[READ], "used": resources[USED], "skipped": skipped},
        "problems": outcome.located_problems(),
        "incomplete_records": dict(sorted(tally.incomplete.items())),
        **files,
    }


def report_line(summary: dict[str, Any]) -> str:
    patients, cards = summary["patients"], summary["cards"]
    return (f"scan: {patients['scanned']:,} patients scanned, {cards['total']:,} cards "
            f"({patients['with_cards']:,} patients with a card), {summary['resources']['read']:,} resources read, "
            f"{len(summary['problems'])} problem lines reported; files in the output folder")
