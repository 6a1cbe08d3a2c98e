"""The value sets (``rules/valuesets/*.json``) loaded once into lookup tables: which code means which analyte,
ingredient, medication class or finding concept.

Every file is checked against ``schemas/valueset.schema.json`` and then across files (an entry's analyte,
ingredient, concept and source must be defined); a problem raises ``ValueSetError`` naming the file and the JSON
path. Lookups are plain dict reads so that building the facts of a patient with thousands of labs stays cheap.
"""
from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple

from ..schemas import first_violation
from .symptom_text import SymptomText
from .units import UnitTable

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"



_NONE: frozenset[str] = frozenset()


class ValueSetError(ValueError):
    """A value set file that cannot be used; the message names the file and the JSON path."""


class SystemCode(NamedTuple):
    """A (system, code) pair; also readable as ``.system`` and ``.code``."""

    system: str
    code: str


@dataclass(frozen=True, slots=True)
class CodeEntry:
    """One code of a value set, with where it is defined and how sure it is (V, S or M)."""

    system: str
    code: str
    display: str
    certainty: str
    valueset: str
    tty: str | None = None  # the RxNorm term type (IN, SCD, SBD, ...) when the value set gives it


@dataclass(frozen=True, slots=True)
class Range:
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class Analyte:
    """A lab analyte: canonical unit, accepted units, and the default adult reference range (by sex when known)."""

    name: str
    title: str
    canonical_unit: str
    units: UnitTable
    default_range: Range
    range_by_sex: Mapping[str, Range]
    range_citation: str
    derived: bool

    def reference_range(self, sex: str | None) -> Range:
        """The default range for ``sex`` ("female"/"male"), else the range for unknown sex."""
        return self.range_by_sex.get(sex or "", self.default_range)


@dataclass(frozen=True, slots=True)
class MedicationClass:
    name: str
    title: str
    ingredients: frozenset[str]
    systemic_only: bool  # products in a topical/eye/ear/nasal form do not count


@dataclass(frozen=True, slots=True)
class Interaction:
    """One interacting ingredient pair of an interaction set, with what its source says of it."""

    first: str
    second: str
    note: str


@dataclass(frozen=True, slots=True)
class InteractionSet:
    name: str
    title: str
    pairs: tuple[Interaction, ...]


@dataclass(frozen=True, slots=True)
class TextMatch:
    """What free text names: the ingredients, the names seen (ingredient or brand, as written) and, when the
    names point at different medication classes without being one combination product, why that is unclear."""

    ingredients: frozenset[str]
    names: tuple[str, ...]
    ambiguity: str | None = None


@dataclass(frozen=True, slots=True)
class Concept:
    name: str
    title: str
    kind: str  # "symptom" (also recorded as an Observation) or "disorder"


class Terminology:
    """Lookup tables over the shipped (or a given) value set directory. Build with ``Terminology.load()``."""

    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        """Build the tables from already schema-valid documents keyed by file name (use ``load``)."""
        self.analytes: dict[str, Analyte] = {}
        self.medication_classes: dict[str, MedicationClass] = {}
        self.concepts: dict[str, Concept] = {}
        self.interactions: dict[str, InteractionSet] = {}
        self.entries: dict[tuple[str, str], CodeEntry] = {}  # keyed by SystemCode
        self._lab: dict[str, str] = {}  # LOINC code -> analyte
        self._ingredients: dict[tuple[str, str], frozenset[str]] = {}  # (system, folded code) -> ingredient names
        self._findings: dict[tuple[str, str], tuple[str, ...]] = {}  # (system, folded code) -> concepts
        self._icd_prefixes: dict[str, tuple[str, ...]] = {}  # folded ICD-10-CM prefix -> concepts
        self._panels: set[SystemCode] = set()
        self._negation_values: set[SystemCode] = set()
        self._negation_interpretations: set[SystemCode] = set()
        self._negation_strings: frozenset[str] = frozenset()
        self.brands: dict[str, frozenset[str]] = {}  # folded brand name -> ingredients
        # A site's local codes (``with_site_maps``): what each is read as; empty for the shipped value sets alone.
        self.site_lab_codes: dict[tuple[str, str], tuple[str, Mapping[str, str]]] = {}  # -> analyte, LOINC coding
        self.site_systems: frozenset[str] = frozenset()
        self._site: dict[tuple[str, str], SystemCode] = {}
        non_systemic: set[str] = set()
        text_terms: dict[str, list[str]] = {}
        cues: set[str] = set()
        qualifiers: set[str] = set()
        for name, doc in documents.items():
            self._add_definitions(name, doc)
            non_systemic.update(w.casefold() for w in doc.get("non_systemic_forms", ()))
            for concept, words in doc.get("text_terms", {}).items():
                text_terms.setdefault(concept, []).extend(words)
            cues.update(doc.get("negation_cues", ()))
            qualifiers.update(doc.get("not_muscle_qualifiers", ()))
        for name, doc in documents.items():
            self._add_entries(name, doc)
        self._check_classes()
        self._check_interactions()
        self._systemic_only = frozenset(c.name for c in self.medication_classes.values() if c.systemic_only)
        self._ingredient_classes: dict[str, frozenset[str]] = _invert(
            {c.name: c.ingredients for c in self.medication_classes.values()}
        )
        self._ingredient_pattern = _words(self._ingredient_classes)
        clash = sorted(set(self.brands) & set(self._ingredient_classes))
        if clash:
            raise ValueSetError(f"brands: {', '.join(clash)} is also an ingredient name")
        self._name_pattern = _words([*self._ingredient_classes, *self.brands])
        self._non_systemic = _words(non_systemic)
        for concept in text_terms:
            if concept not in self.concepts:
                raise ValueSetError(f"text_terms: '{concept}' is not a defined concept")
        self.symptom_text = SymptomText(text_terms, cues, self._negation_strings, qualifiers)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, directory: Path | str | None = None) -> Terminology:
        """Load every ``*.json`` of ``directory`` (None: the value sets shipped in ``cds_service.ruleset``)."""
        root: Traversable = (
            Path(directory) if directory is not None else resources.files("cds_service.ruleset") / "valuesets"
        )
        documents: dict[str, Mapping[str, Any]] = {}
        files = sorted((f for f in root.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
        if not files:
            raise ValueSetError(f"{root}: no value set files (*.json)")
        for file in files:
            try:
                doc = json.loads(file.read_text("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueSetError(f"{file.name}: cannot read: {exc}") from exc
            error = first_violation("valueset", doc)
            if error is not None:
                raise ValueSetError(f"{file.name}: at {_where(error.absolute_path)}: {error.message[:300]}")
            if doc["id"] != file.name.removesuffix(".json"):
                raise ValueSetError(f"{file.name}: at id: '{doc['id']}' differs from the file name")
            documents[file.name] = doc
        return cls(documents)

    def with_site_maps(self, mappings: Mapping[SystemCode, SystemCode]) -> Terminology:
        """This terminology reading each local code of ``mappings`` as its target code (``facts.concept_maps``
        checked that every target is a code ``reads`` knows and no source is one); the tables are shared."""
        site = copy.copy(self)
        site._site = {(source.system, source.code): target for source, target in mappings.items()}
        site.site_systems = frozenset(source.system for source in mappings)
        site.site_lab_codes = {
            source: (self._lab[target.code], {"system": LOINC, "code": target.code,
                                              "display": self.display_of(LOINC, target.code)})
            for source, target in mappings.items() if target.system == LOINC
        }
        return site

    def reads(self, code: SystemCode) -> bool:
        """Whether the value sets give the code a meaning: a lab analyte, medication ingredients or a finding."""
        if code.system == LOINC:
            return code.code in self._lab
        return bool(self.ingredients_for(code.system, code.code) or self.concepts_for(code.system, code.code))

    def _add_definitions(self, file: str, doc: Mapping[str, Any]) -> None:
        for name, spec in doc.get("analytes", {}).items():
            self._define(self.analytes, file, f"analytes/{name}", name, _analyte(name, spec))
        for name, spec in doc.get("classes", {}).items():
            item = MedicationClass(name, spec["title"], frozenset(spec["ingredients"]), spec["systemic_only"])
            self._define(self.medication_classes, file, f"classes/{name}", name, item)
        sources = {s["id"] for s in doc["sources"]}
        for name, spec in doc.get("interactions", {}).items():
            for index, pair in enumerate(spec["pairs"]):
                if pair["source"] not in sources:
                    raise ValueSetError(f"{file}: at interactions/{name}/pairs/{index}/source: "
                                        f"'{pair['source']}' is not in sources")
            pairs = tuple(Interaction(first, second, pair["note"])
                          for pair in spec["pairs"] for first in pair["first"] for second in pair["second"])
            interactions = InteractionSet(name, spec["title"], pairs)
            self._define(self.interactions, file, f"interactions/{name}", name, interactions)
        for name, spec in doc.get("concepts", {}).items():
            self._define(self.concepts, file, f"concepts/{name}", name, Concept(name, spec["title"], spec["kind"]))
        for index, brand in enumerate(doc.get("brands", ())):
            where = f"{file}: at brands/{index}"
            if brand["source"] not in sources:
                raise ValueSetError(f"{where}/source: '{brand['source']}' is not in sources")
            folded = brand["name"].casefold()
            if folded in self.brands:
                raise ValueSetError(f"{where}/name: '{brand['name']}' is already defined")
            self.brands[folded] = frozenset(brand["ingredients"])
        if "negation_strings" in doc:
            self._negation_strings = self._negation_strings | {s.casefold() for s in doc["negation_strings"]}

    @staticmethod
    def _define(table: dict[str, Any], file: str, path: str, name: str, item: Any) -> None:
        if name in table:
            raise ValueSetError(f"{file}: at {path}: '{name}' is already defined")
        table[name] = item

    def _add_entries(self, file: str, doc: Mapping[str, Any]) -> None:
        sources = {s["id"] for s in doc["sources"]}
        for index, entry in enumerate(doc["entries"]):
            where = f"{file}: at entries/{index}"
            if entry["source"] not in sources:
                raise ValueSetError(f"{where}/source: '{entry['source']}' is not in sources")
            key = SystemCode(entry["system"], entry["code"])
            known = self.entries.get(key)
            if known is not None:
                raise ValueSetError(f"{where}: {key.system}|{key.code} is also defined in {known.valueset}")
            self.entries[key] = CodeEntry(
                key.system, key.code, entry["display"], entry["certainty"], doc["id"], entry.get("tty")
            )
            self._index(where, key, entry)

    def _index(self, where: str, key: SystemCode, entry: Mapping[str, Any]) -> None:
        if "analyte" in entry:
            if entry["analyte"] not in self.analytes:
                raise ValueSetError(f"{where}/analyte: unknown analyte '{entry['analyte']}'")
            if key.system != LOINC:
                raise ValueSetError(f"{where}/system: lab analytes are identified by LOINC codes")
            self._lab[key.code] = entry["analyte"]
        if "ingredients" in entry:
            self._ingredients[(key.system, _fold_code(key.system, key.code))] = frozenset(entry["ingredients"])
        if "concepts" in entry:
            unknown = [c for c in entry["concepts"] if c not in self.concepts]
            if unknown:
                raise ValueSetError(f"{where}/concepts: unknown concept(s) {', '.join(unknown)}")
            folded = _fold_code(key.system, key.code)
            if entry.get("match") == "prefix" and key.system != ICD10CM:
                raise ValueSetError(f"{where}/match: only ICD-10-CM codes match by prefix")
            if entry.get("match") == "prefix":
                self._icd_prefixes[folded] = _merge(self._icd_prefixes.get(folded), entry["concepts"])
            else:
                target = (key.system, folded)
                self._findings[target] = _merge(self._findings.get(target), entry["concepts"])
        role = entry.get("role")
        if role == "panel":
            self._panels.add(key)
        elif role == "negation-value":
            self._negation_values.add(key)
        elif role == "negation-interpretation":
            self._negation_interpretations.add(key)

    def _check_classes(self) -> None:
        coded = {i for (system, _), ings in self._ingredients.items() if system == RXNORM for i in ings}
        for item in self.medication_classes.values():
            missing = sorted(item.ingredients - coded)
            if missing:
                raise ValueSetError(f"classes/{item.name}: no RxNorm entry names ingredient(s) {', '.join(missing)}")

    def _check_interactions(self) -> None:
        """Every ingredient of an interaction pair belongs to a medication class (else no medicine could match)."""
        known = {i for c in self.medication_classes.values() for i in c.ingredients}
        for item in self.interactions.values():
            missing = sorted({i for p in item.pairs for i in (p.first, p.second)} - known)
            if missing:
                raise ValueSetError(f"interactions/{item.name}: ingredient(s) {', '.join(missing)} are in no class")

    # ------------------------------------------------------------------ prefetch code lists
    def lab_loinc_codes(self) -> list[str]:
        """Every LOINC code of every analyte (Blood and Serum/Plasma), sorted, for the ``labs`` prefetch."""
        return sorted(self._lab)

    def symptom_observation_codes(self) -> list[SystemCode]:
        """(system, code) of Observation codes that record a symptom: symptom SNOMED codes, the local codes a site
        maps onto them and panel codes."""
        symptom = {name for name, c in self.concepts.items() if c.kind == "symptom"}
        codes = {
            SystemCode(system, code)
            for (system, code), concepts in self._findings.items()
            if system == SNOMED and symptom.intersection(concepts)
        }
        codes |= {SystemCode(*source) for source, target in self._site.items() if target in codes}
        return sorted(codes | self._panels)

    # ------------------------------------------------------------------ lookups
    @property
    def lab_codes(self) -> Mapping[str, str]:
        """LOINC code → analyte name, for the hot path of lab selection (read it, never change it)."""
        return self._lab

    def analyte_for(self, loinc_code: str) -> str | None:
        return self._lab.get(loinc_code)

    def ingredients_for(self, system: str, code: str) -> frozenset[str]:
        """Ingredients of an RxNorm (IN or product) or ATC code; empty when the code is not in a value set."""
        found = self._ingredients.get((system, code if system == RXNORM else _fold_code(system, code)))
        if found is None and self._site:
            target = self._site.get((system, code))
            found = self._ingredients.get((target.system, _fold_code(*target))) if target is not None else None
        return found if found is not None else _NONE

    def ingredients_in_text(self, text: str) -> frozenset[str]:
        """Class ingredient names found in free text as whole words, case-insensitively."""
        if not text:
            return frozenset()
        return frozenset(m.lower() for m in self._ingredient_pattern.findall(text))

    def medication_text(self, text: str) -> TextMatch:
        """The ingredients free text names, through class ingredient names and brand names ("LIPITOR 40 MG PO
        TABS", "atorvastatin 40 MG Oral Tablet [Lipitor]"), matched as whole words case-insensitively.

        Names that point at different medication classes ("Lipitor and Lasix") make the match ambiguous unless one
        name covers every ingredient found (a combination brand with its ingredients spelt out) or the text joins
        them with "/" as combination products are written ("hydrochlorothiazide / triamterene"). Every ingredient
        still counts: the caller warns, and the cards name the medication as written."""
        if not text:
            return TextMatch(frozenset(), ())
        names = tuple(dict.fromkeys(m.casefold() for m in self._name_pattern.findall(text)))
        per_name = [self.brands.get(name, frozenset({name})) for name in names]
        ingredients = frozenset().union(*per_name)
        class_sets = {self.ingredient_classes(found) for found in per_name}
        ambiguity = None
        if len(class_sets) > 1 and "/" not in text and not any(found >= ingredients for found in per_name):
            ambiguity = f"the text names {', '.join(names)}, of different medication classes; all are counted"
        return TextMatch(ingredients, names, ambiguity)

    def ingredient_classes(self, ingredients: Iterable[str], text: str = "") -> frozenset[str]:
        """The classes of the ingredients; classes that count only systemic forms are dropped when ``text``
        names a topical, ophthalmic, otic or nasal form."""
        found = {c for i in ingredients for c in self._ingredient_classes.get(i, ())}
        if text and not self._systemic_only.isdisjoint(found) and self._non_systemic.search(text):
            found -= self._systemic_only
        return frozenset(found)

    def concepts_for(self, system: str, code: str) -> tuple[str, ...]:
        """Finding concepts of a SNOMED CT or ICD-10-CM code (ICD-10-CM also by prefix, dots ignored)."""
        target = self._site.get((system, code)) if system in self.site_systems else None
        if target is not None:
            system, code = target
        folded = _fold_code(system, code)
        found = self._findings.get((system, folded), ())
        if system == ICD10CM:
            for end in range(len(folded) - 1, 2, -1):
                found = _merge(found, self._icd_prefixes.get(folded[:end], ()))
            found = _merge(found, self._icd_prefixes.get(folded, ()))
        return found

    def is_symptom_panel(self, system: str, code: str) -> bool:
        return (system, code) in self._panels

    def is_negation_value(self, system: str, code: str) -> bool:
        return (system, code) in self._negation_values

    def is_negation_interpretation(self, system: str, code: str) -> bool:
        return (system, code) in self._negation_interpretations

    def is_negation_string(self, text: str) -> bool:
        return text.strip().casefold() in self._negation_strings

    def display_of(self, system: str, code: str) -> str:
        """The display a value set gives the code (a site's local code: its target's); empty for a code no value
        set defines."""
        entry = self.entries.get(self._site.get((system, code), (system, code)))
        return entry.display if entry else ""

    def certainty_of(self, system: str, code: str) -> str | None:
        """V, S or M for a code defined in a value set; None for a code no value set defines."""
        entry = self.entries.get((system, code))
        return entry.certainty if entry else None


def _words(words: Iterable[str]) -> re.Pattern[str]:
    """A case-insensitive pattern for any of ``words`` as whole words (longest first); never matches if none."""
    ordered = sorted(words, key=len, reverse=True)
    if not ordered:
        return re.compile(r"(?!)")
    return re.compile(r"\b(" + "|".join(map(re.escape, ordered)) + r")\b", re.I)


def _where(path: Iterable[Any]) -> str:
    return "/".join(str(p) for p in path) or "(root)"


def _analyte(name: str, spec: Mapping[str, Any]) -> Analyte:
    ref = spec["reference_range"]
    return Analyte(
        name=name,
        title=spec["title"],
        canonical_unit=spec["canonical_unit"],
        units=UnitTable.from_spec(spec["units"]),
        default_range=Range(ref["low"], ref["high"]),
        range_by_sex={sex: Range(ref[sex]["low"], ref[sex]["high"]) for sex in ("female", "male") if sex in ref},
        range_citation=ref["citation"],
        derived="derived" in spec,
    )


def _fold_code(system: str, code: str) -> str:
    """ICD-10-CM and ATC codes compare without case (and ICD without dots); other codes as sent."""
    if system == ICD10CM:
        return code.replace(".", "").strip().upper()
    if system == ATC:
        return code.strip().upper()
    return code


def _merge(known: tuple[str, ...] | None, more: Iterable[str]) -> tuple[str, ...]:
    result = list(known or ())
    result.extend(c for c in more if c not in result)
    return tuple(result)


def _invert(groups: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    inverted: dict[str, set[str]] = defaultdict(set)
    for group, members in groups.items():
        for member in members:
            inverted[member].add(group)
    return {member: frozenset(found) for member, found in inverted.items()}
