"""Soak: the production server under 8 clients for 10 minutes, with a mix of hook calls, refusals and feedback.

The server is the one bench/bench_http.py measures (``cds-service serve``: gunicorn, 2 workers x 4 gthread
threads by default), on loopback with a fresh data directory. 8 client threads, each with its own keep-alive
connection (spread evenly over the workers, as in bench_http), send requests back to back, each drawn at random
from a weighted mix (``KINDS``): patient-view calls with 200, 1000 or 5000 prefetched labs (bench_http's
patients), feedback on cards the service returned earlier (accepted with one of the card's suggestions, or
overridden with one of its override reasons), and requests the service must refuse with a given status and
error code. A warm-up phase under the same mix comes first, so that imports, caches and the allocator settle;
then the measured phase. Each worker's memory (RSS, PSS and USS, from /proc/PID/smaps_rollup) is read with the
server idle after the warm-up and again after the measured phase, and under load at the end of every minute.

An error is any request whose answer differs from what it expects (status, and the error code or the shape of
the answer), any connection error, and any 5xx. Prints Markdown tables: median and p95 of the hook calls per
minute, the mix, the workers' memory; exits with status 1 if there was an error, if a worker's RSS or USS grew by
10 % or more, or if a worker was replaced.

    .venv/bin/python bench/soak.py                                    # 1 warm-up + 10 measured minutes
    .venv/bin/python bench/soak.py --minutes 1 --warmup-minutes 0.5   # a smoke run, not a measurement
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bench_http import (
    HOOK_PATH,
    Client,
    Reply,
    Server,
    as_new_user,
    hook_bodies,
    machine,
    prefetch_keys,
    running,
    server_env,
    service_command,
    spread_clients,
)

from cds_service.config import load_config

SIZES = (200, 1000, 5000)
VARIANTS = 12  # distinct hook bodies per size, cycled
BUCKET_SECONDS = 60.0
GROWTH_LIMIT = 0.10
CARDS_KEPT = 64  # the most recent cards a client may still send feedback on
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"
USERS = itertools.count()  # a new clinician per hook call (bench_http.as_new_user); next() is atomic


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int  # in a hundred requests
    status: int  # the status the answer must have
    code: str = ""  # the CDS error code an OperationOutcome's diagnostics must start with
    labs: int = 0  # prefetched labs, for a hook call


KINDS = (
    Kind("hook 200 labs", 62, 200, labs=200),
    Kind("hook 1000 labs", 14, 200, labs=1000),
    Kind("hook 5000 labs", 3, 200, labs=5000),
    Kind("feedback", 10, 200),
    Kind("malformed JSON", 2, 400, "CDS-0001"),
    Kind("unknown service", 2, 404, "CDS-0007"),
    Kind("wrong hook for the service", 2, 400, "CDS-0004"),
    Kind("no patientId", 2, 400, "CDS-0005"),
    Kind("wrong content type", 2, 415, "CDS-0011"),
    Kind("oversize body", 1, 413, "CDS-0010"),
)
HOOK_KINDS = tuple(kind for kind in KINDS if kind.labs)
FEEDBACK = next(kind for kind in KINDS if kind.name == "feedback")


@dataclass(frozen=True)
class Refusal:
    """A request the service must refuse: where it goes, its body and headers, and whether it needs its own
    connection (one whose body is not sent)."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    own_connection: bool = False


@dataclass(frozen=True)
class Card:
    uuid: str
    suggestions: tuple[str, ...]
    override_reasons: tuple[dict[str, Any], ...]


def refusals(body: bytes, max_body_bytes: int) -> dict[str, Refusal]:
    """The refused kinds' requests, each made from ``body``, a valid 200-lab hook call."""
    call = json.loads(body)
    wrong_hook = {**call, "hook": "encounter-start", "context": {**call["context"], "encounterId": "enc-1"}}
    no_patient = {**call, "context": {k: v for k, v in call["context"].items() if k != "patientId"}}
    return {
        "malformed JSON": Refusal(HOOK_PATH, body[: len(body) // 2]),
        "unknown service": Refusal("/cds-services/no-such-service", body),
        "wrong hook for the service": Refusal(HOOK_PATH, json.dumps(wrong_hook).encode()),
        "no patientId": Refusal(HOOK_PATH, json.dumps(no_patient).encode()),
        "wrong content type": Refusal(HOOK_PATH, body, {"Content-Type": "text/plain"}),
        # declared over the limit and not sent: the service refuses on the header, without reading 16 MiB
        "oversize body": Refusal(HOOK_PATH, b"", {"Content-Length": str(max_body_bytes + 1)}, own_connection=True),
    }


def feedback_body(cards: deque[Card], rng: random.Random) -> tuple[bytes, int]:
    """Feedback on one to three of the oldest cards kept (each used once), and how many entries it holds."""
    entries = []
    for _ in range(min(len(cards), rng.choice((1, 1, 2, 3)))):
        card = cards.popleft()
        entry: dict[str, Any] = {
            "card": card.uuid,
            "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if card.suggestions and rng.random() < 0.5:
            entry.update(outcome="accepted", acceptedSuggestions=[{"id": rng.choice(card.suggestions)}])
        else:
            reason: dict[str, Any] = {"reason": rng.choice(card.override_reasons)} if card.override_reasons else {}
            if not reason or rng.random() < 0.3:
                reason["userComment"] = "discussed with the patient"
            entry.update(outcome="overridden", overrideReason=reason)
        entries.append(entry)
    return json.dumps({"feedback": entries}).encode(), len(entries)


def check(kind: Kind, reply: Reply, cards: deque[Card], entries: int) -> str:
    """What is wrong with ``reply`` for a request of ``kind`` ("" if nothing); keeps a hook call's cards.

    Raises LookupError, TypeError or AttributeError for JSON whose shape is wrong.
    """
    if reply.failure:
        return f"connection error ({reply.failure})"
    if reply.status >= 500:
        return f"server error {reply.status}"
    if reply.status != kind.status:
        return f"status {reply.status}, expected {kind.status}"
    try:
        answer = json.loads(reply.payload)
    except ValueError:
        return "answer is not JSON"
    if not isinstance(answer, dict):
        return "answer is not a JSON object"
    if kind.code:
        diagnostics = str(answer.get("issue", [{}])[0].get("diagnostics", ""))
        return "" if diagnostics.startswith(kind.code) else f"diagnostics {diagnostics[:40]!r}, expected {kind.code}"
    if kind is FEEDBACK:
        expected = {"received": entries, "stored": entries, "duplicates": 0}
        return "" if answer == expected else f"feedback answer {answer}, expected {expected}"
    if not isinstance(answer.get("cards"), list) or not answer["cards"]:
        return "no cards"
    cards.extend(
        Card(
            card["uuid"],
            tuple(s["uuid"] for s in card.get("suggestions", []) if "uuid" in s),
            tuple(card.get("overrideReasons", [])),
        )
        for card in answer["cards"]
    )
    return ""


@dataclass
class Tally:
    """What one phase's clients did, per minute (bucket) and kind of request; a request counts in the minute it
    started in."""

    started: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: defaultdict[tuple[int, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[tuple[int, str, str]] = field(default_factory=Counter)

    def add(self, at: float, kind: Kind, seconds: float, problem: str) -> None:
        bucket = int((at - self.started) // BUCKET_SECONDS)
        with self.lock:
            self.latencies[bucket, kind.name].append(seconds)
            if problem:
                self.errors[bucket, kind.name, problem] += 1

    def buckets(self) -> list[int]:
        return sorted({bucket for bucket, _ in self.latencies})

    def count(self, bucket: int | None = None, kind: str | None = None) -> int:
        return sum(
            len(values) for (b, k), values in self.latencies.items()
            if bucket in (None, b) and kind in (None, k)
        )

    def error_count(self, bucket: int | None = None, kind: str | None = None) -> int:
        return sum(n for (b, k, _), n in self.errors.items() if bucket in (None, b) and kind in (None, k))


def client_loop(
    client: Client, port: int, bodies: dict[int, list[bytes]], refused: dict[str, Refusal],
    stop_at: float, tally: Tally, rng: random.Random,
) -> None:
    """Requests back to back from the mix on ``client``'s connection until ``stop_at``."""
    cards: deque[Card] = deque(maxlen=CARDS_KEPT)
    weights = [kind.weight for kind in KINDS]
    served = Counter[int]()
    while time.perf_counter() < stop_at:
        kind = rng.choices(KINDS, weights)[0]
        entries = 0
        started = time.perf_counter()
        if kind is FEEDBACK and not cards:
            kind = HOOK_KINDS[0]
        if kind.labs:
            reply = client.send(HOOK_PATH, as_new_user(bodies[kind.labs][served[kind.labs] % VARIANTS], next(USERS)))
            served[kind.labs] += 1
        elif kind is FEEDBACK:
            body, entries = feedback_body(cards, rng)
            reply = client.send(FEEDBACK_PATH, body)
        elif refused[kind.name].own_connection:
            once = Client(port)
            reply = once.send(refused[kind.name].path, refused[kind.name].body, refused[kind.name].headers)
            once.close()
        else:
            reply = client.send(refused[kind.name].path, refused[kind.name].body, refused[kind.name].headers)
        try:
            problem = check(kind, reply, cards, entries)
        except (LookupError, TypeError, AttributeError) as error:  # JSON of a shape the service never sends
            problem = f"unexpected answer ({type(error).__name__}: {error})"
        tally.add(started, kind, reply.seconds, problem)
    client.close()


# --- memory ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """A process's memory in KiB: resident, proportional (shared pages divided among their users), unique."""

    rss: int
    pss: int
    uss: int


def memory(pid: int) -> Memory:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:  # the first line names the range
        name, value, *_ = line.split()
        values[name.rstrip(":")] = int(value)
    return Memory(values["Rss"], values["Pss"], values["Private_Clean"] + values["Private_Dirty"])


def workers_memory(server: Server) -> dict[int, Memory]:
    return {pid: memory(pid) for pid in server.workers()}


def busy_seconds() -> float:
    """CPU time the machine has spent on anything but idling, over all its CPUs (Linux /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_seconds(server: Server) -> float:
    """CPU time spent so far by processes other than this one and the server."""
    return busy_seconds() - server.cpu_seconds() - time.process_time()


# --- phases ------------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    tally: Tally
    under_load: list[dict[int, Memory]]  # each worker's memory at the end of each minute, with the clients running
    others: list[float]  # the share of the machine's CPU time that other processes used in each minute


def run_phase(
    server: Server, bodies: dict[int, list[bytes]], refused: dict[str, Refusal], clients: int, seconds: float,
    seed: int,
) -> Phase:
    """``clients`` threads on the mix for ``seconds``; each worker's memory read at the end of every minute."""
    connections = spread_clients(server, clients)
    minutes = math.ceil(seconds / BUCKET_SECONDS)
    started = time.perf_counter()
    stop_at = started + seconds
    phase = Phase(Tally(started), [], [])
    others, measured_at = others_seconds(server), started
    threads = [
        threading.Thread(
            target=client_loop,
            args=(client, server.port, bodies, refused, stop_at, phase.tally, random.Random(seed * 1000 + i)),
            daemon=True,  # Ctrl-C stops the main thread, which stops the server; the clients need not be joined
        )
        for i, client in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    for minute in range(1, minutes + 1):
        time.sleep(max(min(started + minute * BUCKET_SECONDS, stop_at - 0.5) - time.perf_counter(), 0))
        phase.under_load.append(workers_memory(server))
        now, others_now = time.perf_counter(), others_seconds(server)
        phase.others.append((others_now - others) / (now - measured_at) / (os.cpu_count() or 1))
        others, measured_at = others_now, now
        print(f"  minute {minute}: {phase.tally.count()} requests, {phase.tally.error_count()} errors",
              file=sys.stderr, flush=True)
    for thread in threads:
        thread.join()
    return phase


# --- report ------------------------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> str:
    """Median / p95 in ms."""
    if len(values) < 2:
        return f"{values[0] * 1000:.1f} / -" if values else "-"
    p95 = statistics.quantiles(values, n=100, method="inclusive")[94]
    return f"{statistics.median(values) * 1000:.1f} / {p95 * 1000:.1f}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def print_minutes(warmup: Phase, measured: Phase) -> None:
    print(
        "| minute | requests | errors | "
        + " | ".join(f"{kind.labs} labs: calls, median / p95 ms" for kind in HOOK_KINDS)
        + " | all hook calls: median / p95 ms | workers' USS under load, MiB | other processes' CPU |"
    )
    print("|---|---:|---:|" + "---|" * (len(HOOK_KINDS) + 2) + "---:|")
    for label, phase in (("warm-up", warmup), ("", measured)):
        for bucket in phase.tally.buckets():
            tally = phase.tally
            hooks = [tally.latencies[bucket, kind.name] for kind in HOOK_KINDS]
            print(
                f"| {label or bucket + 1} | {tally.count(bucket)} | {tally.error_count(bucket)} | "
                + " | ".join(f"{len(values)}: {percentiles(values)}" for values in hooks)
                + f" | {percentiles([x for values in hooks for x in values])} | "
                + " + ".join(mib(m.uss) for m in phase.under_load[bucket].values())
                + f" | {phase.others[bucket]:.0%} |"
            )


def print_mix(warmup: Phase, measured: Phase) -> None:
    total = measured.tally.count()
    print("\n| request | expected | measured phase: requests (share) | errors | warm-up: requests | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in KINDS:
        expected = f"{kind.status} {kind.code}".strip()
        count = measured.tally.count(kind=kind.name)
        print(
            f"| {kind.name} | {expected} | {count} ({count / total:.1%}) "
            f"| {measured.tally.error_count(kind=kind.name)} "
            f"| {warmup.tally.count(kind=kind.name)} | {warmup.tally.error_count(kind=kind.name)} |"
        )


def growth(start: int, end: int) -> float:
    return end / start - 1


def print_memory(start: dict[int, Memory], end: dict[int, Memory]) -> list[tuple[str, bool, str]]:
    """The workers' memory table; the goal checks it gives (RSS and USS growth below ``GROWTH_LIMIT``)."""
    print("\n| worker | " + " | ".join(f"{name} start → end, MiB (growth)" for name in ("RSS", "PSS", "USS")) + " |")
    print("|---|---|---|---|")
    checks = []
    for pid, first in start.items():
        last = end.get(pid)
        if last is None:
            checks.append((f"worker {pid} served to the end", False, "replaced"))
            continue
        print(f"| {pid} | " + " | ".join(
            f"{mib(a)} → {mib(b)} ({growth(a, b):+.1%})"
            for a, b in ((first.rss, last.rss), (first.pss, last.pss), (first.uss, last.uss))
        ) + " |")
        for name, a, b in (("RSS", first.rss, last.rss), ("USS", first.uss, last.uss)):
            checks.append((f"worker {pid}: {name} growth < {GROWTH_LIMIT:.0%}", growth(a, b) < GROWTH_LIMIT,
                           f"{growth(a, b):+.1%}"))
    return checks


def log_problems(log: Path) -> Counter[str]:
    """The server log's ERROR and CRITICAL lines (JSON lines) and tracebacks, by level."""
    found = Counter[str]()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                level = str(json.loads(line).get("level", ""))
            except ValueError:
                continue
            if level in ("ERROR", "CRITICAL"):
                found[level] += 1
        elif "Traceback" in line:
            found["Traceback"] += 1
    return found


def commit() -> str:
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty.strip() else "")


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cds-soak-"))
    env = server_env(work)
    print(f"machine: {machine()}", flush=True)
    print(f"commit {commit()}; started {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)
    print(
        f"gunicorn: {args.workers} workers x {args.threads} threads (gthread); {args.clients} keep-alive clients; "
        f"warm-up {args.warmup_minutes:g} min, then {args.minutes:g} min measured",
        flush=True,
    )
    max_body_bytes = load_config().max_body_bytes
    try:
        with running(service_command(args.workers, args.threads), env, work / "service.log") as server:
            keys = prefetch_keys(server.port)
            bodies = {size: hook_bodies(size, keys, VARIANTS) for size in SIZES}
            refused = refusals(bodies[200][0], max_body_bytes)
            warmup = run_phase(server, bodies, refused, args.clients, args.warmup_minutes * 60, args.seed)
            server.wait_idle()
            first_workers = server.workers()
            start = workers_memory(server)
            measured = run_phase(server, bodies, refused, args.clients, args.minutes * 60, args.seed + 1)
            server.wait_idle()
            end = workers_memory(server)
            replaced = sorted(set(server.workers()) - set(first_workers))
        problems = log_problems(work / "service.log")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nfinished {datetime.now(UTC).isoformat(timespec='seconds')}; hook calls per minute, median / p95 "
          "(all the clients' requests were answered back to back):\n")
    print_minutes(warmup, measured)
    print_mix(warmup, measured)
    print("\nmemory: idle, after the warm-up (start) and after the measured phase (end), from /proc/PID/smaps_rollup")
    checks = print_memory(start, end)
    errors = Counter[tuple[str, str]]()
    for phase in (warmup, measured):
        for (_, kind, problem), n in phase.tally.errors.items():
            errors[kind, problem] += n
    print(f"\nerrors: {sum(errors.values())}" + "".join(
        f"\n  {n} x {kind}: {problem}" for (kind, problem), n in errors.most_common()
    ))
    print("server log: " + (", ".join(f"{n} {level}" for level, n in problems.items()) or "no ERROR lines"))
    checks.append(("no errors (warm-up and measured phase)", not errors, str(sum(errors.values()))))
    checks.append(("no worker replaced", not replaced, ", ".join(map(str, replaced)) or "none"))
    print()
    for name, ok, value in checks:
        print(f"{'met' if ok else 'NOT MET':8} {name}: {value}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def _stop(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through ``running``, which stops the server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="measured phase, minutes (default 10)")
    parser.add_argument("--warmup-minutes", type=float, default=1, help="warm-up phase, minutes (default 1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' draws from the mix")
    parser.add_argument("--keep", action="store_true", help="keep the work directory with the server log")
    signal.signal(signal.SIGTERM, _stop)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
