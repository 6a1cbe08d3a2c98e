"""Lab Observations → ``LabResult`` in the analyte's canonical unit, newest first per analyte.

Selection is by LOINC code through one dict read before anything else is looked at. What decides whether a
value is used (status, value, unit, time) is checked at once, and an Observation is skipped with a warning
naming it when its value, unit or time cannot be used; ``entered-in-error``, ``cancelled`` and ``preliminary``
results are skipped silently (clinical-reference.md §5). The rest of a ``LabResult`` (reference range,
interpretation, display text) is built the first time the rules read that result (``LabSeries``), so a
prefetch of thousands of labs costs little more than walking over it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from math import isfinite
from operator import itemgetter
from typing import Any, overload

from .fhir import as_list, codings, effective_time, number, reference_name, status_of
from .model import Coding, LabResult
from .terminology import LOINC, Analyte, Terminology
from .units import Conversion, fold

SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled", "preliminary"})
CORRECTED_CALCIUM = "calcium_corrected"
UNCORRECTED_CALCIUM = "calcium_uncorrected"
# Analytes computed from others: reading one back some time reads its inputs back as far.
DERIVED_FROM: Mapping[str, tuple[str, ...]] = {
    CORRECTED_CALCIUM: ("calcium", "albumin"),
    UNCORRECTED_CALCIUM: ("calcium", "albumin", CORRECTED_CALCIUM),
}
# A value reported as a bound ("<8", ">5000": below a detection limit, above an analyser's range) keeps the bound
# as its value and its comparator: ">5000 U/L" is above any CK threshold up to 5000, "<8 ng/mL" below any vitamin
# D threshold from 8 up, and a threshold the bound does not decide is unknown (rules.criteria.bounded). "ad"
# (sufficient to achieve), or any other comparator, is not understood: the value is kept as reported (AS_REPORTED).
COMPARATORS = frozenset({"<", "<=", ">", ">="})
# The same bound written as text (``valueString``): a comparator and a plain decimal number, nothing else.
_TEXT_BOUND = re.compile(r"\s*(?P<comparator><=|>=|<|>)\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*")
# A value whose unit (or comparator) the service does not understand still counts as a result of its analyte, kept
# as reported: only the lab's own range in that unit and its interpretation flags can judge it (``LabResult``).
AS_REPORTED = Conversion("", 1.0)
REFERENCE_ALBUMIN = 4.0  # g/dL: the albumin the common correction adjusts to (clinical-reference.md §1)


# What the hot path keeps of a usable lab Observation; the LabResult is built from it on demand. A plain tuple
# (a NamedTuple costs several times more to create): (effective, value in the canonical unit, analyte,
# Conversion used, the Observation, its LOINC coding that named the analyte).
Measured = tuple[datetime, float, str, Conversion, Mapping[str, Any], Mapping[str, Any]]


class LabSeries(Sequence[LabResult]):
    """One analyte's results, newest first; each ``LabResult`` is built the first time it is read."""

    __slots__ = ("_built", "_make", "_rows")

    def __init__(self, rows: Sequence[Any], make: Callable[[Any], LabResult]) -> None:
        self._rows = rows
        self._make = make
        self._built: list[LabResult | None] = [None] * len(rows)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> LabResult: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[LabResult, ...]: ...

    def __getitem__(self, index: int | slice) -> LabResult | tuple[LabResult, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._rows))))
        built = self._built[index]
        if built is None:
            built = self._built[index] = self._make(self._rows[index])
        return built

    def __iter__(self) -> Iterator[LabResult]:
        # A map, not a generator: the rules read the newest few results and stop, and closing a generator early
        # costs more than reading one result.
        return map(self.__getitem__, range(len(self._rows)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside; compares by content

    def __repr__(self) -> str:
        return f"LabSeries({list(self)!r})"


class LabReader:
    """Reads lab Observations for one patient and builds each analyte's ``LabSeries``."""

    def __init__(self, terminology: Terminology, sex: str | None, warnings: list[str]) -> None:
        self._lab = terminology.lab_codes
        self._site = terminology.site_lab_codes
        self._analytes = terminology.analytes
        self._units = {name: analyte.units for name, analyte in terminology.analytes.items()}
        self._sex = sex
        self._warnings = warnings
        self._codings: dict[tuple[str, str], Coding] = {}
        self._rows: dict[str, list[Measured]] = {}
        self._as_reported: dict[str, list[Measured]] = {}  # results kept in a unit the service cannot convert

    def take(self, observation: Mapping[str, Any]) -> bool:
        """Keep the Observation's value when its code is a lab code and the value is usable.

        Returns False (having looked at nothing but the code) when the Observation is not a lab this service
        reads, so the caller can route it elsewhere; True otherwise, whether or not its value could be used.
        This is the hot path: it reads only what decides whether the value is used.
        """
        code = observation.get("code")
        if type(code) is not dict:
            return False
        coding_list = code.get("coding")
        lab, site = self._lab, self._site
        coding: Mapping[str, Any]  # the LOINC coding that names the analyte (a mapped local code's target)
        for item in coding_list if type(coding_list) is list else as_list(coding_list):
            if type(item) is dict:
                loinc = item.get("code")
                analyte = lab.get(loinc) if type(loinc) is str else None
                if analyte is not None and item.get("system", LOINC) == LOINC:
                    coding = item
                    break
                if site and type(loinc) is str:  # a site's local code, read as the LOINC code it maps onto
                    system = item.get("system")
                    mapped = site.get((system, loinc)) if type(system) is str else None
                    if mapped is not None:
                        analyte, coding = mapped
                        break
        else:
            return False
        if status_of(observation) in SKIPPED_STATUSES:
            return True
        quantity = observation.get("valueQuantity")
        if type(quantity) is not dict:
            quantity = bound_from_text(observation)
            if quantity is None:
                self._warn(observation, f"no numeric value for {analyte}{_sent_text(observation)}")
                return True
            observation = {**observation, "valueQuantity": quantity}  # read on as if the lab had sent it so
        raw = quantity.get("value")
        # The common case (a finite JSON float) inline; number() handles the rest and refuses NaN and infinities.
        value = raw if type(raw) is float and isfinite(raw) else number(raw)
        if value is None:
            self._warn(observation, f"value {raw!r} for {analyte} is not a number, not used")
            return True
        effective = effective_time(observation)
        if effective is None:
            self._warn(observation, f"no effective time for {analyte}")
            return True
        units = self._units[analyte]
        unit_code = quantity.get("code")
        conversion = units.by_code.get(unit_code) if type(unit_code) is str else None
        if conversion is None:
            conversion = units.find(unit_code, quantity.get("unit"))
        comparator = quantity.get("comparator")
        if conversion is None or (comparator and comparator not in COMPARATORS):
            shown = _unit_shown(quantity)
            unit_problem = f"unknown unit {shown!r}" if shown else "no unit"
            problem = unit_problem if conversion is None else f"unknown comparator {comparator!r}"
            self._warn(observation, f"{problem} for {analyte}: judged only by the lab's own range and flags")
            self._as_reported.setdefault(analyte, []).append(
                (effective, value, analyte, AS_REPORTED, observation, coding))
            return True
        rows = self._rows.get(analyte)
        if rows is None:
            rows = self._rows[analyte] = []
        rows.append((effective, value * conversion.factor + conversion.offset, analyte, conversion, observation,
                     coding))
        return True

    def finish(self) -> dict[str, LabSeries]:
        """Every analyte's results newest first, with the calcium series derived from total calcium (below)."""
        series: dict[str, LabSeries] = {}
        for name, rows in self._rows.items():
            rows.sort(key=itemgetter(0), reverse=True)
            series[name] = LabSeries(rows, self._result)
        for name, kept in self._as_reported.items():
            rows = sorted((*self._rows.get(name, ()), *kept), key=itemgetter(0), reverse=True)
            series[name] = LabSeries(rows, self._result)
        self._calcium_series(series)
        return series

    def _calcium_series(self, series: dict[str, LabSeries]) -> None:
        """``calcium_corrected``: the lab's own albumin-corrected calcium (LOINC 29265-6) and each total calcium
        corrected with a same-day albumin (none where the lab reported a corrected value that day);
        ``calcium_uncorrected``: total calcium without a same-day albumin or corrected value, newer than every
        corrected one (a later corrected value supersedes it)."""
        calcium, albumin = self._rows.get("calcium", []), self._rows.get("albumin", [])
        reported = self._rows.get(CORRECTED_CALCIUM, [])
        reported_days = {_utc_day(row[0]) for row in reported}
        unreported = [row for row in calcium if _utc_day(row[0]) not in reported_days]
        pairs = same_day_pairs(unreported, albumin)
        corrected: list[Any] = sorted([*reported, *pairs], key=_row_time, reverse=True)
        if corrected:
            series[CORRECTED_CALCIUM] = LabSeries(corrected, self._corrected)
        latest = _row_time(corrected[0]) if corrected else None
        paired = {id(pair[0]) for pair in pairs}
        uncorrected = [row for row in unreported if id(row) not in paired and (latest is None or row[0] > latest)]
        if uncorrected:
            series[UNCORRECTED_CALCIUM] = LabSeries(uncorrected, self._uncorrected)

    # ------------------------------------------------------------------ building results on demand
    def _result(self, row: Measured) -> LabResult:
        effective, value, name, conversion, observation, coding = row
        if conversion is AS_REPORTED:
            return self._as_reported_result(row)
        analyte = self._analytes[name]
        low, high, from_resource = self._range(observation, analyte, conversion)
        return LabResult(
            analyte=name,
            value=value,
            unit=analyte.canonical_unit,
            effective=effective,
            code=self._coding(coding),
            ref_low=low,
            ref_high=high,
            ref_from_resource=from_resource,
            interpretation=_flags(observation),
            reported=_as_sent(observation, conversion),
            resource=reference_name(observation),
            comparator=_comparator(observation),
            factor=conversion.factor,
            offset=conversion.offset,
            decimals=_decimals(observation),
        )

    def _as_reported_result(self, row: Measured) -> LabResult:
        """A result in a unit the service cannot convert (or with a comparator it does not know), as reported:
        its range is the lab's own range in the same unit, if any."""
        effective, value, name, _, observation, coding = row
        quantity = observation["valueQuantity"]
        low = high = None
        for item in _normal_ranges(observation):
            low, high = _same_unit_bound(item.get("low"), quantity), _same_unit_bound(item.get("high"), quantity)
            if low is not None or high is not None:
                break
        return LabResult(
            analyte=name,
            value=value,
            unit=_unit_shown(quantity),
            effective=effective,
            code=self._coding(coding),
            ref_low=low,
            ref_high=high,
            ref_from_resource=low is not None or high is not None,
            interpretation=_flags(observation),
            reported=f"{quantity.get('comparator') or ''}{value:.6g} {_unit_shown(quantity)}".strip(),
            resource=reference_name(observation),
            comparator=_comparator(observation),
            decimals=_decimals(observation),
            interpretable=False,
        )

    def _corrected(self, row: Measured | tuple[Measured, Measured]) -> LabResult:
        """A lab-reported corrected calcium as it is, or Ca_corr (mg/dL) = Ca + 0.8 × (4.0 − albumin g/dL).

        The 0.8 form is the commonly used simplification (0.02 mmol/L per g/L of albumin below 40 g/L in SI units);
        Payne et al. (BMJ 1973) derived Ca − albumin + 4.0 (mg/dL, g/dL) from their own laboratory's regression,
        and adjustment formulas are laboratory-specific (clinical-reference.md §1). The formula compensates for a
        low albumin; an albumin at or above 4.0 leaves the measured value as it is. Correcting a normal calcium
        downwards for a high albumin would report hypocalcaemia that is not there (seen with Synthea records, whose
        albumin is often 5.0-5.5 g/dL and unrelated to their calcium). Canonical units are mg/dL and g/dL.
        """
        if len(row) != 2:
            return self._result(row)  # a Measured row: the lab's own corrected value
        (_, calcium, _, ca_conversion, observation, _), albumin = row
        value = calcium + 0.8 * max(REFERENCE_ALBUMIN - albumin[1], 0.0)
        return self._derived(CORRECTED_CALCIUM, value, row[0], (
            f"{value:.1f} mg/dL (calcium {_as_sent(observation, ca_conversion)}, "
            f"albumin {_as_sent(albumin[4], albumin[3])})"))

    def _uncorrected(self, row: Measured) -> LabResult:
        """A total calcium that no albumin or corrected value accompanies, as measured."""
        observation, conversion = row[4], row[3]
        return self._derived(UNCORRECTED_CALCIUM, row[1], row,
                             f"total calcium {_as_sent(observation, conversion)}, no albumin the same day")

    def _derived(self, name: str, value: float, calcium: Measured, reported: str) -> LabResult:
        effective, _, _, conversion, observation, coding = calcium
        analyte = self._analytes[name]
        default = analyte.reference_range(self._sex)
        return LabResult(
            analyte=name,
            value=value,
            unit=analyte.canonical_unit,
            effective=effective,
            code=self._coding(coding),
            ref_low=default.low,
            ref_high=default.high,
            ref_from_resource=False,
            interpretation=(),
            reported=reported,
            resource=reference_name(observation),
            comparator=_comparator(observation),
            factor=conversion.factor,  # compared at the precision of the calcium as reported
            offset=conversion.offset,
            decimals=_decimals(observation),
        )

    def _coding(self, coding: Mapping[str, Any]) -> Coding:
        """The LOINC Coding of a result (one object per code and display)."""
        display = coding.get("display")
        key = (coding["code"], display if isinstance(display, str) else "")
        found = self._codings.get(key)
        if found is None:
            found = self._codings[key] = Coding(LOINC, *key)
        return found

    def _range(
        self, observation: Mapping[str, Any], analyte: Analyte, conversion: Conversion
    ) -> tuple[float | None, float | None, bool]:
        """The Observation's own referenceRange in canonical units, else the analyte's default for the sex."""
        for item in _normal_ranges(observation):
            low = _bound(item.get("low"), analyte, conversion)
            high = _bound(item.get("high"), analyte, conversion)
            if low is not None or high is not None:
                return low, high, True
        default = analyte.reference_range(self._sex)
        return default.low, default.high, False

    def _warn(self, observation: Mapping[str, Any], message: str) -> None:
        self._warnings.append(f"{reference_name(observation)}: {message}")


def same_day_pairs(calcium: Sequence[Measured], albumin: Sequence[Measured]) -> list[tuple[Measured, Measured]]:
    """Each calcium (newest first) with the albumin closest in time on the same UTC calendar day, if any.

    clinical-reference.md §1: use the correction only when albumin was measured with the calcium (same panel or
    same day).
    """
    by_day: dict[date, list[Measured]] = {}
    for item in albumin:
        by_day.setdefault(_utc_day(item[0]), []).append(item)
    pairs = []
    for ca in calcium:
        same_day = by_day.get(_utc_day(ca[0]))
        if same_day:
            pairs.append((ca, min(same_day, key=lambda a: abs((a[0] - ca[0]).total_seconds()))))
    return pairs


def _row_time(row: Measured | tuple[Measured, Measured]) -> datetime:
    """The time of a measured row, or of the calcium of a (calcium, albumin) pair."""
    return row[0][0] if len(row) == 2 else row[0]


def _utc_day(when: datetime) -> date:
    return when.astimezone(UTC).date()


def _normal_ranges(observation: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The Observation's reference ranges that apply to this patient's value (``_is_normal_range``)."""
    ranges = observation.get("referenceRange")
    return (item for item in as_list(ranges) if isinstance(item, dict) and _is_normal_range(item)) if ranges else \
        iter(())


def _is_normal_range(item: Mapping[str, Any]) -> bool:
    """A range without ``type``/``appliesTo`` or typed ``normal`` applies to this patient's value."""
    if item.get("appliesTo"):
        return False
    kind = item.get("type")
    return not kind or any(code == "normal" for _, code, _ in codings(kind))


def _bound(quantity: Any, analyte: Analyte, value_conversion: Conversion) -> float | None:
    """A range limit in canonical units; a limit without a unit is taken in the value's unit."""
    if not isinstance(quantity, dict):
        return None
    value = number(quantity.get("value"))
    if value is None:
        return None
    code, text = quantity.get("code"), quantity.get("unit")
    conversion = analyte.units.find(code, text) if code or text else value_conversion
    return conversion.apply(value) if conversion else None


def _same_unit_bound(quantity: Any, value: Mapping[str, Any]) -> float | None:
    """A range limit given without a unit or in the value's own unit (code or text), as it stands."""
    if not isinstance(quantity, dict):
        return None
    code, text = quantity.get("code"), quantity.get("unit")
    same = (not code and not text) or any(
        isinstance(mine, str) and isinstance(theirs, str) and fold(mine) == fold(theirs)
        for mine, theirs in ((code, value.get("code")), (text, value.get("unit"))))
    return number(quantity.get("value")) if same else None


def _decimals(observation: Mapping[str, Any]) -> int | None:
    """The decimal places the lab reported its value with: those of the value, or more when its own range limits
    show more (a JSON parser drops trailing zeros: "2.10" arrives as 2.1). None when not a plain number."""
    quantity = observation["valueQuantity"]
    places = [_places(quantity.get("value"))]
    for item in _normal_ranges(observation):
        places += [_places(bound.get("value")) for bound in (item.get("low"), item.get("high"))
                   if isinstance(bound, dict) and _same_unit_bound(bound, quantity) is not None]
    known = [p for p in places if p is not None]
    return max(known) if known else None


def _places(raw: Any) -> int | None:
    if type(raw) not in (int, float, str):
        return None
    try:
        exponent = Decimal(str(raw).strip()).as_tuple().exponent
    except InvalidOperation:
        return None
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _flags(observation: Mapping[str, Any]) -> tuple[str, ...]:
    interpretation = observation.get("interpretation")
    return tuple(c for _, c, _ in codings(interpretation)) if interpretation else ()


def _unit_shown(quantity: Mapping[str, Any]) -> str:
    """The unit as the lab wrote it (its text, else its code), "" when it gave none."""
    for unit in (quantity.get("unit"), quantity.get("code")):
        if isinstance(unit, str) and unit.strip():
            return unit.strip()
    return ""


def _comparator(observation: Mapping[str, Any]) -> str:
    comparator = observation["valueQuantity"].get("comparator")
    return comparator if comparator in COMPARATORS else ""


def _as_sent(observation: Mapping[str, Any], conversion: Conversion) -> str:
    """The value and unit as the Observation reported them (e.g. "1.4 mg/dL", "<8 ng/mL"), for card text."""
    quantity = observation["valueQuantity"]
    value = number(quantity.get("value"))
    unit = quantity.get("unit")
    return f"{_comparator(observation)}{value:.6g} {unit if isinstance(unit, str) and unit else conversion.unit}"


def bound_from_text(observation: Mapping[str, Any]) -> dict[str, Any] | None:
    """A ``valueString`` that is only a comparator and a number ("<2.5", "> 60", "<=0.5") as the Quantity a lab
    would have sent (value kept as written, for its precision), in the unit of the lab's own normal range when that
    names one (a lab writes its range in its result's unit); None for any other text, which stays unread."""
    text = observation.get("valueString")
    match = _TEXT_BOUND.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    quantity: dict[str, Any] = {"value": match["number"], "comparator": match["comparator"]}
    for item in _normal_ranges(observation):
        for limit in (item.get("low"), item.get("high")):
            if isinstance(limit, dict) and (limit.get("code") or limit.get("unit")):
                return quantity | {key: limit[key] for key in ("system", "code", "unit") if key in limit}
    return quantity


def _sent_text(observation: Mapping[str, Any]) -> str:
    text = observation.get("valueString")
    return f" (value {text!r} is text)" if isinstance(text, str) else ""
