"""The scan as a Dask graph: read blocks, join referenced Medications, group by patient, answer each patient.

blocks of NDJSON (dask.bytes.read_bytes: whole lines, gzip files whole) -> read_block per block -> a frame of
records (patient, prefetch key, place, line; cds_service.scan.frames) -> shuffle on the patient id into groups of
a constant size -> one hook call per patient -> per group: a tally and the worklist rows, streamed back to this
process as each group finishes. Medication lines are joined to the orders that reference them (a merge on the
Medication id) and shuffled on the patient id into the same groups on their own.

The shuffles are distributed's peer-to-peer shuffle: each worker writes what it receives to its local disk and
reads the groups back from it, so no process ever holds the export (a task-based shuffle kept each worker's share
of it in memory until the end).

Without a scheduler address a LocalCluster runs one single-threaded worker process per core; with one, the
same graph runs on that cluster (whose workers need cds-service installed and SOURCE readable at the same path).
"""
from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from dask.base import annotate
from dask.bytes.core import read_bytes
from dask.dataframe import DataFrame, from_delayed
from dask.delayed import Delayed, delayed
from distributed import Client, LocalCluster, as_completed

from ..evaluation import Runtime
from .frames import LINES, MEDICATIONS, REFERENCES, frame, medications_frame, patients, records_frame, references_frame
from .hooks import router_for
from .lines import READ, Block, read_block
from .patients import evaluate_partition
from .routing import Router
from .source import Source
from .tally import Tally

Rows = list[dict[str, Any]]
BLOCK_SIZE = 16 << 20  # NDJSON per block read: what a worker holds per block in flight, whatever the export size
PARTITION_BYTES = 16 << 20  # NDJSON per group of patients after the shuffle
GZIP_RATIO = 8  # an estimate of how much larger a gzipped NDJSON file is unzipped: only group sizes depend on it
SHUFFLE = "p2p"  # distributed's peer-to-peer shuffle: each worker spools what it receives to disk
# The priority of the tasks that take a group from the shuffle's output: a worker answers a group it unpacked
# before it unpacks the next one (otherwise the quick unpacking tasks ran first and a worker held up to 11 groups).
GROUP_FIRST = 1


@dataclass(frozen=True, slots=True)
class Plan:
    source: Source
    runtime: Runtime
    hook: str
    block_size: int = BLOCK_SIZE
    evaluate: bool = True  # False: read and group only (the benchmark's floor)
    partition_bytes: int = PARTITION_BYTES


@dataclass(slots=True)
class Outcome:
    """What came back: the tally, per-block reading statistics and the worklist rows spooled per partition."""

    tally: Tally = field(default_factory=Tally)
    resources: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, Any]] = field(default_factory=list)
    block_lines: dict[str, dict[int, int]] = field(default_factory=dict)  # file -> block -> lines
    spool: list[Path] = field(default_factory=list)  # one file of rows per partition, in partition order

    def rows(self) -> Iterator[dict[str, Any]]:
        for path in self.spool:
            if path.exists():
                with path.open("rb") as stream:
                    for line in stream:
                        yield orjson.loads(line)

    def located_problems(self) -> list[dict[str, Any]]:
        """The problems with line numbers counted from the start of their file."""
        located = []
        for problem in sorted(self.problems, key=lambda p: (p["file"], p["block"], p["line"])):
            blocks = self.block_lines.get(problem["file"], {})
            before = sum(n for block, n in blocks.items() if block < problem["block"])
            located.append({"file": problem["file"], "line": before + problem["line"], "problem": problem["problem"]})
        return located


@contextmanager
def connect(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new local cluster with ``workers`` processes (closed
    on the way out)."""
    if scheduler:
        with Client(scheduler, timeout="20s", set_as_default=False) as client:
            yield client
        return
    with (
        _logging_at(logging.ERROR, "distributed"),
        LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,  # the hook path is pure Python: processes, not threads, use the cores
            processes=True,
            dashboard_address="127.0.0.1:0",  # a free loopback port, never a fixed or public one
            # distributed's own worker logs: at ERROR a worker still logs, with its traceback, a heartbeat that
            # raced the scheduler's shutdown at the end of a run on a loaded machine. A failed task reaches this
            # process as its exception, and the hook path's own log lines are not distributed's.
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@contextmanager
def _logging_at(level: int, name: str) -> Iterator[None]:
    """Logger ``name`` at ``level`` for the duration. The local cluster's scheduler runs in this process, and
    logs each finished shuffle as a warning ("Shuffle ... deactivated due to stimulus 'task-finished-...'"), which
    a run's standard error is no place for; ``silence_logs`` quiets only the workers' and its own handlers."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def group_count(source: Source, partition_bytes: int) -> int:
    """How many groups of patients the shuffle makes: one per ``partition_bytes`` of NDJSON (gzipped files
    counted at ``GZIP_RATIO`` times their size), so a group's size, and a worker's memory, stays the same however
    large the export."""
    size = sum(os.path.getsize(f.path) * (GZIP_RATIO if f.compressed else 1) for f in source.files)
    return max(1, math.ceil(size / partition_bytes))


def build(plan: Plan) -> tuple[list[Delayed], list[Delayed]]:
    """The graph: the per-partition results and the per-block statistics."""
    router = router_for(plan.runtime, plan.hook)
    blocks = []
    for data_file in plan.source.files:
        name = Path(data_file.path).name
        _sample, [parts] = read_bytes(
            data_file.path,
            delimiter=b"\n",
            blocksize=None if data_file.compressed else plan.block_size,
            compression="gzip" if data_file.compressed else None,
            sample=False,
        )
        blocks += [delayed(read_block, pure=True)(part, name, index, router) for index, part in enumerate(parts)]
    groups = group_count(plan.source, plan.partition_bytes)
    records = _frames([delayed(records_frame)(block, ordinal) for ordinal, block in enumerate(blocks)], LINES)
    parts = _by_patient(records, groups)
    joined_parts: list[Delayed] | None = None
    if "Medication" in router.resource_types:
        medications = _frames([delayed(medications_frame)(b, ordinal) for ordinal, b in enumerate(blocks)], MEDICATIONS)
        references = _frames([delayed(references_frame)(b) for b in blocks], REFERENCES)
        joined = references.merge(medications, on="medication", shuffle_method=SHUFFLE)[list(LINES)]
        # shuffled on its own into the same groups (same hash, same count), not concatenated to the records
        # before their shuffle: that made the records wait in memory for the join
        joined_parts = _by_patient(joined, groups)
    with annotate(priority=GROUP_FIRST):
        if joined_parts is not None:
            parts = [delayed(_concat)(part, more) for part, more in zip(parts, joined_parts, strict=True)]
        if plan.evaluate:
            settings_json = plan.runtime.settings.model_dump_json()
            results = [delayed(_evaluate)(part, settings_json, router, plan.hook) for part in parts]
        else:
            results = [delayed(_count_patients)(part) for part in parts]
    return results, [delayed(_statistics)(b) for b in blocks]


def _by_patient(lines: DataFrame, groups: int) -> list[Delayed]:
    """The lines in ``groups`` partitions, each patient's in one: the shuffle on the patient id."""
    return list(lines.shuffle("patient", npartitions=groups, shuffle_method=SHUFFLE).to_delayed())


def _concat(lines: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([lines, more], ignore_index=True)


def _frames(parts: list[Delayed], columns: dict[str, object]) -> DataFrame:
    """A Dask frame of one pandas frame per block."""
    frames: DataFrame = from_delayed(parts, meta=frame(columns, []), verify_meta=False)
    return frames


def run(plan: Plan, client: Client, spool: Path, *, progress: bool) -> Outcome:
    """Compute the graph on ``client``, folding results in as they arrive; rows go to files under ``spool``."""
    groups, statistics = build(plan)
    outcome = Outcome(spool=[spool / f"{i}.ndjson" for i in range(len(groups))])
    futures = client.compute([*groups, *statistics])
    index = {future.key: i for i, future in enumerate(futures)}
    shown = Progress(len(statistics), len(groups), enabled=progress)
    for future in as_completed(futures, loop=client.loop):
        value = future.result()
        position = index[future.key]
        if position < len(groups):
            for tally, rows in value:
                outcome.tally.merge(tally)
                _spool(outcome.spool[position], rows)
            shown.partition(outcome.tally.patients)
        else:
            _fold_statistics(outcome, value)
            shown.block(outcome.resources[READ])
        future.release()
    shown.done()
    return outcome


def _spool(path: Path, rows: list[dict[str, Any]]) -> None:
    rows.sort(key=lambda row: row["patient"])  # stable: a patient's cards stay in the hook's order
    with path.open("ab") as stream:
        stream.writelines(orjson.dumps(row) + b"\n" for row in rows)


def _fold_statistics(outcome: Outcome, block: Block) -> None:
    outcome.resources.update(block.counts)
    outcome.problems += block.problems
    outcome.block_lines.setdefault(block.file, {})[block.index] = block.lines


class Progress:
    """One line on standard error, rewritten in place: blocks and resources read, partitions and patients done.

    Silent unless enabled (the command enables it when standard error is a terminal)."""

    def __init__(self, blocks: int, partitions: int, *, enabled: bool) -> None:
        self.blocks, self.partitions, self.enabled = blocks, partitions, enabled
        self.blocks_done = self.partitions_done = self.resources = self.patients = 0

    def block(self, resources: int) -> None:
        self.blocks_done, self.resources = self.blocks_done + 1, resources
        self._show()

    def partition(self, patients: int) -> None:
        self.partitions_done, self.patients = self.partitions_done + 1, patients
        self._show()

    def _show(self, end: str = "") -> None:
        if self.enabled:
            done = (self.blocks_done + self.partitions_done) / max(self.blocks + self.partitions, 1)
            bar = "#" * int(done * 30)
            print(f"\rscan [{bar:<30}] {self.resources:,} resources read ({self.blocks_done}/{self.blocks} blocks), "
                  f"{self.patients:,} patients evaluated ({self.partitions_done}/{self.partitions} groups)",
                  end=end, file=sys.stderr, flush=True)

    def done(self) -> None:
        self._show(end="\n")


def rules_of(runtime: Runtime, hook: str) -> list[tuple[str, str, str]]:
    """(id, title, deployment) of every rule of ``hook``, in rule order."""
    deployment = runtime.governance.deployment
    return [(r.id, r.title, deployment[r.id]) for r in runtime.ruleset.rules if hook in r.hooks]


def _statistics(block: Block) -> Block:
    """The block without its records: what the client needs to count and report."""
    return Block(block.file, block.index, block.lines, counts=block.counts, problems=block.problems)


def _evaluate(lines: pd.DataFrame, settings_json: str, router: Router, hook: str) -> list[tuple[Tally, Rows]]:
    return evaluate_partition(patients(lines), settings_json, router, hook)


def _count_patients(lines: pd.DataFrame) -> list[tuple[Tally, Rows]]:
    """The floor's stand-in for evaluation: group the lines by patient as the scan does, count, answer nothing."""
    tally = Tally()
    for _group in patients(lines):
        tally.patients += 1
    return [(tally, [])]


