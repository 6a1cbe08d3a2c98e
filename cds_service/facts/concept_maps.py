"""Site code maps: a hospital's FHIR R4 ``ConceptMap`` resources, mapping its local codes onto codes the service reads.

The folder named by ``concept_maps_dir`` holds ``*.json`` files, each one ConceptMap or a Bundle of them. Every
``group`` names its source and target systems; every ``element`` a local code and its ``target`` codes. A target
is applied only when its ``equivalence`` says each thing the local code names is also what the target code names:

- ``equal``, ``equivalent``: the two codes mean the same;
- ``wider``, ``subsumes``: the target is wider than the local code (a local "atorvastatin 40 mg tablet" onto the
  RxNorm ingredient atorvastatin), so whatever carries the local code is also what the target names.

``narrower`` and ``specializes`` (the target is more specific: the local code may name something else too),
``relatedto``, ``inexact``, ``unmatched`` and ``disjoint`` are never applied; they are counted, not reported.

A target must be a code the service reads: a LOINC code of a lab analyte, an RxNorm (or ATC) code of the
medication value sets, or a SNOMED CT / ICD-10-CM code of the finding value sets. A lab map may state the unit the
local code is reported in as ``target.dependsOn`` with ``property`` ``Observation.valueQuantity.code`` (FHIR R4:
the mapping holds for data where that element has that value; ``system`` ``http://unitsofmeasure.org``); that unit
must be one the target analyte converts. Any other ``dependsOn`` or a ``product`` makes the mapping conditional on
something the service cannot see, so it is refused. Each problem is one line naming the file and the entry.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir.resources.R4B.conceptmap import ConceptMap, ConceptMapGroup, ConceptMapGroupElementTarget
from pydantic import ValidationError

from .terminology import LOINC, SystemCode, Terminology

APPLIED = frozenset({"equal", "equivalent", "wider", "subsumes"})
NOT_APPLIED = frozenset({"relatedto", "narrower", "specializes", "inexact", "unmatched", "disjoint"})
UNIT_PROPERTY = "Observation.valueQuantity.code"


@dataclass(frozen=True, slots=True)
class SiteMapping:
    """One applied mapping: the local code, the code it is read as, and where the map says so."""

    source: SystemCode
    target: SystemCode
    where: str  # "<file>: group <n> element <code>"


@dataclass(slots=True)
class SiteMaps:
    """Every applied mapping of a folder, keyed by local code, and every problem found reading it."""

    mappings: dict[SystemCode, SiteMapping] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: int = 0
    not_applied: int = 0  # targets whose equivalence is not a safe one


def read_site_maps(folder: Path, terminology: Terminology) -> SiteMaps:
    """The ConceptMaps of ``folder`` checked against ``terminology``; a folder that cannot be read is one problem."""
    maps = SiteMaps()
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file())
    except OSError as exc:
        maps.problems.append(f"{folder}: cannot read the folder ({exc.strerror or exc})")
        return maps
    for path in files:
        maps.files += 1
        for where, resource in _resources(path, maps.problems):
            try:
                concept_map = ConceptMap.model_validate(resource)
            except ValidationError as exc:
                maps.problems.append(f"{where}: not a FHIR R4 ConceptMap: {_first_error(exc)}")
                continue
            for index, group in enumerate(concept_map.group or ()):
                _read_group(f"{where}: group {index}", group, terminology, maps)
    return maps


def _resources(path: Path, problems: list[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, resource) for the ConceptMap a file holds, or each entry of its Bundle."""
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name}: cannot be read as JSON ({exc})")
        return
    if not isinstance(document, dict):
        problems.append(f"{path.name}: not a FHIR resource (a JSON {type(document).__name__})")
        return
    if document.get("resourceType") != "Bundle":
        yield path.name, document
        return
    entries = document.get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield f"{path.name}: entry {index}", resource
        else:
            problems.append(f"{path.name}: entry {index}: holds no resource")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = " ".join(error["msg"].split())
    return f"{where}: {message}" if where else message


def _read_group(where: str, group: ConceptMapGroup, terminology: Terminology, maps: SiteMaps) -> None:
    if not group.source or not group.target:
        maps.problems.append(f"{where}: needs both source and target (the code systems mapped from and to)")
        return
    for index, element in enumerate(group.element or ()):
        if not element.code:
            maps.problems.append(f"{where} element {index}: has no code")
            continue
        entry = f"{where} element {element.code}"
        source = SystemCode(group.source, element.code)
        for target in element.target or ():
            _read_target(entry, source, SystemCode(group.target, target.code or ""), target, terminology, maps)


def _read_target(where: str, source: SystemCode, code: SystemCode, target: ConceptMapGroupElementTarget,
                 terminology: Terminology, maps: SiteMaps) -> None:
    equivalence = target.equivalence
    if equivalence in NOT_APPLIED:
        maps.not_applied += 1
        return
    if equivalence not in APPLIED:
        maps.problems.append(f"{where}: equivalence {equivalence!r} is not a FHIR R4 ConceptMap equivalence")
        return
    if not code.code:
        maps.problems.append(f"{where}: target has no code")
        return
    problems = [*_conditions(target, code, terminology), *_meanings(source, code, terminology)]
    if problems:
        maps.problems += [f"{where}: {problem}" for problem in problems]
        return
    known = maps.mappings.get(source)
    if known is None:
        maps.mappings[source] = SiteMapping(source, code, where)
    elif known.target != code:
        maps.problems.append(f"{where}: duplicate source: {_shown(source)} is also mapped to {_shown(known.target)} "
                             f"({known.where})")


def _meanings(source: SystemCode, target: SystemCode, terminology: Terminology) -> list[str]:
    """The target must be read by the service, the local code must not be (a site map cannot change a code's
    meaning)."""
    problems = []
    if not terminology.reads(target):
        problems.append(f"unknown target: the service does not read {_shown(target)}")
    if terminology.reads(source):
        problems.append(f"source {_shown(source)} is a code the service reads itself; a site map cannot change it")
    return problems


def _conditions(target: ConceptMapGroupElementTarget, code: SystemCode, terminology: Terminology) -> list[str]:
    """What ``dependsOn`` and ``product`` say: only a lab map's unit is understood."""
    problems = []
    if target.product:
        problems.append("product is not supported: the service cannot tell when such a mapping holds")
    analyte = terminology.analyte_for(code.code) if code.system == LOINC else None
    for condition in target.dependsOn or ():
        if condition.property != UNIT_PROPERTY or analyte is None:
            problems.append(f"dependsOn {condition.property!r} is not supported (only {UNIT_PROPERTY} on a lab map)")
        elif terminology.analytes[analyte].units.find(condition.value, condition.value) is None:
            problems.append(f"unit {condition.value!r} cannot be converted to {analyte} "
                            f"({terminology.analytes[analyte].canonical_unit})")
    return problems


def _shown(code: SystemCode) -> str:
    return f"{code.system}|{code.code}"


def run_check(folder: Path, terminology: Terminology, out: Callable[[str], None]) -> int:
    """``cds-service terminology check``: one line per problem, then a verdict; 0 when every map can be used."""
    maps = read_site_maps(folder, terminology)
    out(f"concept maps: {maps.files} file(s) in {folder}, {len(maps.mappings)} local code(s) mapped, "
        f"{maps.not_applied} target(s) not applied (equivalence not equal, equivalent, wider or subsumes)")
    for problem in maps.problems:
        out(f"FAIL {problem}")
    out("terminology check: " + ("OK" if not maps.problems else f"{len(maps.problems)} problem(s)"))
    return 0 if not maps.problems else 1
