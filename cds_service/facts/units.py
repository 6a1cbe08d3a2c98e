"""Unit conversion to an analyte's canonical unit, by UCUM code first and by the unit's text second.

The factors come from ``rules/valuesets/lab-analytes.json`` (clinical-reference.md §1); nothing here knows an
analyte. A unit that matches neither the UCUM codes nor the aliases is unknown, and the value is not used.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Conversion:
    """canonical = value × factor + offset (the offset is only for °F → °C and IFCC → NGSP HbA1c)."""

    unit: str  # the UCUM code this conversion is for
    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.factor + self.offset


@dataclass(frozen=True, slots=True)
class UnitTable:
    """The units one analyte accepts: exact UCUM codes, then case-insensitive codes and aliases."""

    by_code: Mapping[str, Conversion]
    by_text: Mapping[str, Conversion]

    @classmethod
    def from_spec(cls, units: Iterable[Mapping[str, Any]]) -> UnitTable:
        by_code: dict[str, Conversion] = {}
        by_text: dict[str, Conversion] = {}
        for unit in units:
            conversion = Conversion(unit["ucum"], float(unit["factor"]), float(unit.get("offset", 0.0)))
            by_code[conversion.unit] = conversion
            for text in (conversion.unit, *unit.get("aliases", ())):
                by_text[fold(text)] = conversion
        return cls(by_code, by_text)

    def find(self, code: object, text: object) -> Conversion | None:
        """The conversion for a Quantity's ``code`` (UCUM), else for its ``unit`` text; None when unknown."""
        if isinstance(code, str):
            found = self.by_code.get(code) or self.by_text.get(fold(code))
            if found:
                return found
        if isinstance(text, str):
            return self.by_text.get(fold(text))
        return None


def fold(unit: str) -> str:
    """A unit text compared without case or spaces ("mmol/l", "mmol / L" are "mmol/L")."""
    return unit.strip().replace(" ", "").casefold()
