"""The scan's lines as pandas frames: the form in which Dask's peer-to-peer shuffle moves them between workers.

Each block of a file becomes a frame of (patient, key, at, line): ``at`` is the line's place in the export (the
block's ordinal in the scan, then the line's number in the block), so each patient's lines come out of the shuffle
in export order, whatever order the shuffle delivered them in. Medications travel as (medication, at, line) and the
orders that reference them as (medication, patient, key), joined on the Medication id into lines of those patients.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby
from operator import itemgetter

import pandas as pd
import pyarrow as pa

from .lines import Block, Lines

TEXT, BYTES = pd.ArrowDtype(pa.string()), pd.ArrowDtype(pa.binary())
LINES = {"patient": TEXT, "key": TEXT, "at": "int64", "line": BYTES}
MEDICATIONS = {"medication": TEXT, "at": "int64", "line": BYTES}
REFERENCES = {"medication": TEXT, "patient": TEXT, "key": TEXT}


def frame(columns: dict[str, object], rows: Sequence[tuple[object, ...]]) -> pd.DataFrame:
    """A frame of ``rows`` with the given column names and types (an empty one when there are no rows)."""
    values: list[tuple[object, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    return pd.DataFrame({
        name: pd.Series(column, dtype=kind)
        for (name, kind), column in zip(columns.items(), values, strict=True)
    })


def at(ordinal: int, number: int) -> int:
    """The place of line ``number`` of the ``ordinal``-th block: later blocks sort after, whatever their length."""
    return ordinal << 32 | number


def records_frame(block: Block, ordinal: int) -> pd.DataFrame:
    return frame(LINES, [(patient, key, at(ordinal, n), line) for patient, key, n, line in block.records])


def medications_frame(block: Block, ordinal: int) -> pd.DataFrame:
    return frame(MEDICATIONS, [(med, at(ordinal, n), line) for med, n, line in block.medications])


def references_frame(block: Block) -> pd.DataFrame:
    return frame(REFERENCES, block.references)


def patients(lines: pd.DataFrame) -> Iterator[tuple[str, Lines]]:
    """One output partition of the shuffle as each patient's (key, line) pairs, in export order: a Medication
    that several orders of the patient reference under one key is there once."""
    lines = lines.drop_duplicates(["patient", "key", "at"]).sort_values(["patient", "at", "key"])
    rows = zip(lines["patient"].tolist(), lines["key"].tolist(), lines["line"].tolist(), strict=True)
    for patient, items in groupby(rows, key=itemgetter(0)):
        yield patient, [(key, line) for _patient, key, line in items]
