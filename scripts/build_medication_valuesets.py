#!/usr/bin/env python3
"""Rebuild ``rules/valuesets/medication-brands.json`` from RxNorm and VSAC source files.

Reads RxNorm concept rows in the RXNCONSO.RRF format of NLM's release (``RXCUI|LAT|TS|LUI|STT|SUI|ISPREF|RXAUI|
SAUI|SCUI|SDUI|SAB|TTY|CODE|STR|SRL|SUPPRESS|CVF|``; lines starting with ``#`` are comments) and, optionally,
VSAC expansions (the ``{"valueSets": {oid: {codes}}}`` file of shared/docs or FHIR ValueSet JSON with an
``expansion`` or an enumerated ``compose``). Keeps the RxNorm product and ingredient rows (SAB RXNORM, not
suppressed) whose ingredients include one that a medication class names, reads each product's ingredients from
its RxNorm normalised name (RxNorm spells every active ingredient of a clinical or branded drug, separated by
" / "; salts such as "rosuvastatin calcium" fold to the class ingredient), and reads brand names from the
"[Brand]" suffix of branded names. A brand name (BN) row, whose name spells no ingredient, takes the ingredients
of that brand's products in the same input (a BN without them is left out). Codes already defined in the
``--known`` value-set files are left out, so the output never repeats a code.

    python scripts/build_medication_valuesets.py --rxnconso rules/valuesets/sources/RXNCONSO.public.RRF \\
        --classes rules/valuesets/medication-classes.json --known rules/valuesets/medication-products.json \\
        --source-id public-code-lists --source-title "..." --certainty S -o rules/valuesets/medication-brands.json

Each run is deterministic (rows sorted by code, brands by name), so the committed file can be compared with a
rebuild.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PRODUCT_TTYS = frozenset({"SCD", "SBD", "SCDC", "SBDC", "SCDF", "SBDF", "GPCK", "BPCK", "SCDG", "SBDG"})
INGREDIENT_TTYS = frozenset({"IN", "PIN", "MIN"})
BN = "BN"  # brand name
CONSO_FIELDS = 18  # RXNCONSO.RRF columns (each row ends with a trailing "|")
_LEADING_QUANTITY = re.compile(r"^\d+(?:\.\d+)? (?:HR|ACTUAT|ML|MG|DAY) ", re.I)  # "24 HR", "200 ACTUAT", "10 ML"
_STRENGTH = re.compile(r"\s\d")
_BRAND = re.compile(r"\s\[([^\]]+)\]\s*$")
_PACK = re.compile(r"\(([^()]+)\)")


class SourceError(ValueError):
    """A source file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Concept:
    """One RxNorm row kept from RXNCONSO: code, term type and normalised name."""

    code: str
    tty: str
    name: str


def read_rxnconso(path: Path) -> Iterator[Concept]:
    """The RXNORM-source, unsuppressed rows of an RXNCONSO.RRF file."""
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("|")
            if len(fields) < CONSO_FIELDS:
                raise SourceError(f"{path}:{number}: {len(fields)} fields, RXNCONSO rows have {CONSO_FIELDS}")
            rxcui, sab, tty, name, suppress = fields[0], fields[11], fields[12], fields[14], fields[16]
            if not rxcui.isdigit():
                raise SourceError(f"{path}:{number}: RXCUI {rxcui!r} is not a number")
            if sab == "RXNORM" and suppress in ("", "N"):
                yield Concept(rxcui, tty, name)


@dataclass(frozen=True, slots=True)
class VsacCode:
    """One RxNorm code of a VSAC expansion, with the value set's id, title and version."""

    oid: str
    title: str
    version: str
    code: str
    display: str


def read_vsac(path: Path) -> Iterator[VsacCode]:
    """Every RxNorm code of a VSAC expansion file."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("valueSets"), dict):
        sets: Iterable[tuple[str, Mapping[str, Any]]] = doc["valueSets"].items()
    elif isinstance(doc, dict) and doc.get("resourceType") == "ValueSet":
        sets = [(str(doc.get("id", path.stem)), doc)]
    else:
        raise SourceError(f"{path}: neither a VSAC expansion file nor a FHIR ValueSet")
    for oid, value_set in sets:
        codes = list(value_set.get("codes") or value_set.get("expansion", {}).get("contains") or [])
        for include in value_set.get("compose", {}).get("include", []) if not codes else []:
            codes.extend({"system": include.get("system"), **c} for c in include.get("concept", []))
        title, version = str(value_set.get("title", oid)), str(value_set.get("version", "unknown"))
        for code in codes:
            if code.get("system") == RXNORM:
                yield VsacCode(oid, title, version, str(code["code"]), str(code.get("display", "")))


def ingredient_names(name: str, known: Iterable[str]) -> list[str]:
    """The active ingredients an RxNorm normalised name spells, salts folded to a ``known`` ingredient name."""
    text = _BRAND.sub("", name.strip())
    pack = _PACK.findall(text) if text.startswith("{") else []
    parts = [p for item in (pack or [text]) for p in _BRAND.sub("", item).split(" / ")]
    ordered = sorted(known, key=len, reverse=True)
    found: list[str] = []
    for raw in parts:
        part = _LEADING_QUANTITY.sub("", raw.strip())
        strength = _STRENGTH.search(part)
        segment = (part[:strength.start()] if strength else part).strip().lower()
        match = next((k for k in ordered if segment == k or segment.startswith(k + " ")), None)
        if match is None and strength is None:  # a dose form name without strengths: "Prednisone Oral Tablet"
            match = next((k for k in ordered if re.search(rf"\b{re.escape(k)}\b", segment)), None)
        ingredient = match or re.sub(r"[^a-z0-9 -]", "", segment).strip()
        if ingredient and ingredient not in found:
            found.append(ingredient)
    return found


def brand_of(name: str) -> str | None:
    """The brand name of a branded RxNorm name ("atorvastatin 40 MG Oral Tablet [Lipitor]" -> "Lipitor")."""
    found = _BRAND.search(name)
    return found.group(1).strip() if found else None


def known_codes(paths: Iterable[Path]) -> set[str]:
    """RxNorm codes already defined by these value-set files."""
    codes: set[str] = set()
    for path in paths:
        doc = json.loads(path.read_text("utf-8"))
        codes.update(e["code"] for e in doc.get("entries", ()) if e.get("system") == RXNORM)
    return codes


def build(
    concepts: Iterable[Concept], vsac: Iterable[VsacCode], classes_doc: Mapping[str, Any],
    known: set[str], source: Mapping[str, str], certainty: str,
) -> dict[str, Any]:
    """The medication-brands value-set document."""
    class_ingredients = {i for c in classes_doc["classes"].values() for i in c["ingredients"]}
    entries: dict[str, dict[str, Any]] = {}
    sources = [dict(source)]
    rows = [(source["id"], c.code, c.tty, c.name) for c in concepts if c.tty in PRODUCT_TTYS | INGREDIENT_TTYS | {BN}]
    vsac_sets: dict[str, str] = {}
    for item in vsac:
        rows.append((f"vsac-{item.oid}", item.code, "", item.display))
        vsac_sets[item.oid] = f"VSAC {item.title} (version {item.version})"
    for oid, title in sorted(vsac_sets.items()):
        sources.append({"id": f"vsac-{oid}", "title": title, "url": f"http://cts.nlm.nih.gov/fhir/ValueSet/{oid}"})
    named = [(row, ingredient_names(row[3], class_ingredients)) for row in rows if row[2] != BN]
    brands: dict[str, set[str]] = {}
    for (*_, name), ingredients in named:
        brand = brand_of(name)
        if brand and not class_ingredients.isdisjoint(ingredients):
            brands.setdefault(brand, set()).update(ingredients)
    # a brand name (BN) row names no ingredient: it takes those of its brand's products in the same input
    named += [(row, sorted(brands.get(row[3], ()))) for row in rows if row[2] == BN]
    for (source_id, code, tty, name), ingredients in named:
        if class_ingredients.isdisjoint(ingredients):
            continue
        if code in known or code in entries:
            continue
        entry: dict[str, Any] = {"system": RXNORM, "code": code, "display": name,
                                 "certainty": certainty if source_id == source["id"] else "V",
                                 "ingredients": ingredients, "source": source_id}
        if tty:
            entry["tty"] = tty
        entries[code] = entry
    return {
        "id": "medication-brands",
        "kind": "medication-products",
        "title": "RxNorm branded products and brand names mapped to their ingredients",
        "description": "Generated by scripts/build_medication_valuesets.py (do not edit by hand): RxNorm codes of "
                       "branded and other products whose ingredients a medication class names, and the brand "
                       "names ('[Lipitor]' in RxNorm's names) that free text may carry. Ingredients are read from "
                       "the RxNorm normalised name (a brand name's from its products). "
                       "rules/valuesets/sources/README.md says where every row of the source extract was found.",
        "sources": sources,
        "brands": [{"name": name, "ingredients": sorted(ings), "source": source["id"]}
                   for name, ings in sorted(brands.items(), key=lambda b: b[0].casefold())],
        "entries": sorted(entries.values(), key=lambda e: int(e["code"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rxnconso", type=Path, required=True, help="RXNCONSO.RRF (full release or extract)")
    parser.add_argument("--vsac", type=Path, action="append", default=[], help="VSAC expansion JSON (repeatable)")
    parser.add_argument("--classes", type=Path, required=True, help="medication-classes.json")
    parser.add_argument("--known", type=Path, action="append", default=[],
                        help="value-set file whose RxNorm codes are left out (repeatable)")
    parser.add_argument("--source-id", required=True)
    parser.add_argument("--source-title", required=True, help="what the RXNCONSO file is, with its version")
    parser.add_argument("--source-url")
    parser.add_argument("--certainty", choices=("V", "S", "M"), default="V")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    source = {"id": args.source_id, "title": args.source_title}
    if args.source_url:
        source["url"] = args.source_url
    try:
        classes_doc = json.loads(args.classes.read_text("utf-8"))
        concepts = list(read_rxnconso(args.rxnconso))
        vsac = [row for path in args.vsac for row in read_vsac(path)]
        document = build(concepts, vsac, classes_doc, known_codes(args.known), source, args.certainty)
    except (OSError, SourceError, json.JSONDecodeError, KeyError) as exc:
        print(f"build_medication_valuesets: {exc}", file=sys.stderr)
        return 1
    args.output.write_text(render(document), "utf-8")
    return 0


def render(document: Mapping[str, Any]) -> str:
    """The document as JSON with one brand and one entry a line, as the other value-set files are written."""
    parts = []
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n    ".join(json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f'  "{key}": [\n    {items}\n  ]')
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


if __name__ == "__main__":
    sys.exit(main())
