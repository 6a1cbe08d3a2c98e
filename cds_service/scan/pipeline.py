"""The scan as a Dask graph: read blocks, join referenced Medications, group by patient, answer each patient.

blocks of NDJSON (dask.bytes.read_bytes: whole lines, gzip files whole) -> read_block per block -> records
(patient, prefetch key, line) -> [Medication lines joined to the patients whose orders reference them, by a
shuffle on the Medication id] -> shuffle on the patient id (dask.bag groupby, task-based: every worker holds
some patients, no process holds the export) -> one hook call per patient -> per partition: a tally and the
worklist rows, streamed back to this process as each partition finishes.

Without a scheduler address a LocalCluster runs one single-threaded worker process per core; with one, the
same graph runs on that cluster (whose workers need cds-service installed and SOURCE readable at the same path).
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from dask.bag import Bag, concat, from_delayed
from dask.bytes.core import read_bytes
from dask.delayed import delayed
from distributed import Client, LocalCluster, as_completed

from ..evaluation import Runtime
from .hooks import router_for
from .lines import READ, Block, Lines, read_block
from .patients import evaluate_partition
from .source import Source
from .tally import Tally

BLOCK_SIZE = 64 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    source: Source
    runtime: Runtime
    hook: str
    block_size: int = BLOCK_SIZE
    evaluate: bool = True  # False: read and group only (the benchmark's floor)


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
        LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,  # the hook path is pure Python: processes, not threads, use the cores
            processes=True,
            dashboard_address="127.0.0.1:0",  # a free loopback port, never a fixed or public one
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def build(plan: Plan) -> tuple[Bag, list[Any]]:
    """The graph: a bag of per-partition results and the per-block statistics."""
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
    records = from_delayed([delayed(_records)(b) for b in blocks])
    if "Medication" in router.resource_types:
        tagged = concat([
            from_delayed([delayed(_medication_lines)(b) for b in blocks]),
            from_delayed([delayed(_medication_references)(b) for b in blocks]),
        ])
        records = concat([records, tagged.groupby(_first, shuffle="tasks").map_partitions(_join_medications)])
    grouped = records.groupby(_first, shuffle="tasks")
    if plan.evaluate:
        settings_json = plan.runtime.settings.model_dump_json()
        results = grouped.map_partitions(evaluate_partition, settings_json, router, plan.hook)
    else:
        results = grouped.map_partitions(_count_patients)
    return results, [delayed(_statistics)(b) for b in blocks]


def run(plan: Plan, client: Client, spool: Path, *, progress: bool) -> Outcome:
    """Compute the graph on ``client``, folding results in as they arrive; rows go to files under ``spool``."""
    results, statistics = build(plan)
    partitions = results.to_delayed()
    outcome = Outcome(spool=[spool / f"{i}.ndjson" for i in range(len(partitions))])
    futures = client.compute([*partitions, *statistics])
    index = {future.key: i for i, future in enumerate(futures)}
    shown = Progress(len(statistics), len(partitions), enabled=progress)
    for future in as_completed(futures, loop=client.loop):
        value = future.result()
        position = index[future.key]
        if position < len(partitions):
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


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _records(block: Block) -> list[tuple[str, Lines]]:
    """The block's lines gathered per patient: one item per patient and block to shuffle, not one per line."""
    by_patient: dict[str, Lines] = {}
    for patient, key, line in block.records:
        by_patient.setdefault(patient, []).append((key, line))
    return list(by_patient.items())


def _medication_lines(block: Block) -> list[tuple[str, None, bytes]]:
    return [(med, None, line) for med, line in block.medications]


def _medication_references(block: Block) -> list[tuple[str, tuple[str, str], None]]:
    return [(med, (patient, key), None) for med, patient, key in block.references]


def _join_medications(groups: list[tuple[str, list[tuple[Any, ...]]]]) -> list[tuple[str, Lines]]:
    """Each Medication line as a line of every patient and key that references it (once per patient and key)."""
    joined = []
    for _med, items in groups:
        lines = [line for _m, _ref, line in items if line is not None][:1]
        holders = {ref for _m, ref, _line in items if ref is not None}
        joined += [(patient, [(key, line)]) for patient, key in sorted(holders) for line in lines]
    return joined


def _statistics(block: Block) -> Block:
    """The block without its records: what the client needs to count and report."""
    return Block(block.file, block.index, block.lines, counts=block.counts, problems=block.problems)


def _count_patients(groups: list[tuple[str, list[tuple[str, Lines]]]]) -> list[tuple[Tally, list[dict[str, Any]]]]:
    """The floor's stand-in for evaluation: count the patients, answer nothing."""
    tally = Tally()
    for _group in groups:
        tally.patients += 1
    return [(tally, [])]


