"""HTTP benchmark: patient-view against the production server, compared in the same run with a floor.

The service (``cds-service serve``: gunicorn, 2 workers x 4 threads by default) and the floor (bench/floor_app.py:
a bare Flask app that only parses the request and answers ``{"cards": []}``, under the same gunicorn settings)
run side by side on loopback. For each prefetch size (200, 1000 and 5000 labs by default) the script measures

* sequential latency: one client, requests alternating service / floor, one at a time;
* 8 concurrent clients, spread evenly over the workers: windows of a few seconds alternating service / floor,
  several rounds each;

and prints one Markdown table plus whether each goal is met. Patients are generated here: years of lab history
(potassium, sodium, magnesium, calcium, creatinine, eGFR, glucose, CK, TSH, albumin; values in and out of range,
some with reference ranges and interpretations), documented cramps (Observation and Condition), atorvastatin and
furosemide orders. Every request carries a fresh hookInstance and the full prefetch (no FHIR server involved).

    .venv/bin/python bench/bench_http.py                # full run, 1.5 to 3 minutes on 2 cores
    .venv/bin/python bench/bench_http.py --quick        # fewer requests, for a smoke check
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SERVICE_ID = "muscle-cramps-patient-view"
HOOK_PATH = f"/cds-services/{SERVICE_ID}"
PATIENT_ID = "bench-patient-1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
HISTORY_YEARS = 8
BODY_VARIANTS = 12  # distinct bodies per size (hookInstance, lab ids), cycled
SPREAD_ATTEMPTS = 200  # batches of connections opened per window to even out the clients over the workers


@dataclass(frozen=True)
class Analyte:
    loinc: str
    display: str
    unit: str
    low: float
    high: float
    decimals: int
    per_visit: float  # chance the analyte is in a visit's panel
    recent_shift: float = 0.0  # added to the mean over the last year (furosemide lowers potassium, ...)


# Codes from the service's own lab value set (rules/valuesets/lab-analytes.json); Blood and Serum/Plasma codes mixed
# the way Synthea (6298-4, 2947-0) and US labs (2823-3, 2951-2) send them. Ranges are common adult ranges.
ANALYTES = (
    Analyte("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.0, 1, 0.9, -0.7),
    Analyte("6298-4", "Potassium [Moles/volume] in Blood", "mmol/L", 3.5, 5.0, 1, 0.1, -0.7),
    Analyte("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0, 0.9, -2),
    Analyte("2947-0", "Sodium [Moles/volume] in Blood", "mmol/L", 135, 145, 0, 0.1),
    Analyte("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 1.7, 2.2, 1, 0.4, -0.2),
    Analyte("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 1, 0.8),
    Analyte("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 2, 0.9, 0.15),
    Analyte("33914-3", "Glomerular filtration rate/1.73 sq M.predicted", "mL/min/{1.73_m2}", 60, 110, 0, 0.6, -8),
    Analyte("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0, 0.9),
    Analyte("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 30, 200, 0, 0.3, 350),
    Analyte("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0, 2, 0.15),
    Analyte("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0, 1, 0.5),
)


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


def _lab(rng: random.Random, analyte: Analyte, at: datetime, recent: bool, serial: int) -> dict[str, Any]:
    span = analyte.high - analyte.low
    mean = (analyte.low + analyte.high) / 2 + (analyte.recent_shift if recent else 0.0)
    value = round(max(rng.gauss(mean, span / 3), analyte.low / 4), analyte.decimals)
    if analyte.decimals == 0:
        value = int(value)
    lab: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"lab-{serial}",
        "status": "final",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
        "code": _coding(LOINC, analyte.loinc, analyte.display),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": at.isoformat(timespec="seconds"),
        "issued": (at + timedelta(hours=3)).isoformat(timespec="seconds"),
        "valueQuantity": _quantity(value, analyte.unit),
    }
    if rng.random() < 0.6:
        low, high = _quantity(analyte.low, analyte.unit), _quantity(analyte.high, analyte.unit)
        lab["referenceRange"] = [{"low": low, "high": high}]
    if value < analyte.low or value > analyte.high:
        flag = "L" if value < analyte.low else "H"
        lab["interpretation"] = [_coding(INTERPRETATION, flag, "Low" if flag == "L" else "High")]
    return lab


def make_labs(rng: random.Random, count: int, now: datetime) -> list[dict[str, Any]]:
    """``count`` lab Observations over the years, in visits of several analytes, newest first."""
    visits = max(count // 5, 1)
    step = timedelta(days=HISTORY_YEARS * 365) / visits
    labs: list[dict[str, Any]] = []
    serial = 0
    for visit in range(visits * 4):  # enough visits even when panels come out small
        at = now - timedelta(days=2) - step * visit + timedelta(minutes=rng.randint(0, 600))
        recent = now - at < timedelta(days=365)
        for analyte in ANALYTES:
            if rng.random() < analyte.per_visit:
                labs.append(_lab(rng, analyte, at, recent, serial))
                serial += 1
                if len(labs) == count:
                    return labs
    return labs


def make_prefetch(count: int, now: datetime, seed: int) -> dict[str, Any]:
    """Every prefetch key of the patient-view service for one patient with ``count`` labs."""
    rng = random.Random(seed)
    subject = {"reference": f"Patient/{PATIENT_ID}"}

    def condition(cid: str, code: str, display: str, onset: datetime) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": _coding(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
            ),
            "category": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item"
                )
            ],
            "code": _coding(SNOMED, code, display),
            "subject": subject,
            "onsetDateTime": onset.isoformat(timespec="seconds"),
            "recordedDate": onset.isoformat(timespec="seconds"),
        }

    def order(oid: str, rxcui: str, display: str, authored: datetime) -> dict[str, Any]:
        return {
            "resourceType": "MedicationRequest",
            "id": oid,
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": _coding(RXNORM, rxcui, display),
            "subject": subject,
            "authoredOn": authored.date().isoformat(),
            "dosageInstruction": [{
                "text": "1 tablet by mouth once daily",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            }],
        }

    cramp = {
        "resourceType": "Observation",
        "id": "symptom-cramp",
        "status": "final",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "survey", "Survey")],
        "code": _coding(SNOMED, "55300003", "Cramp (finding)"),
        "subject": subject,
        "effectiveDateTime": (now - timedelta(days=10)).isoformat(timespec="seconds"),
        "valueBoolean": True,
    }
    return {
        "patient": {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "gender": "male",
            "birthDate": "1956-04-12",
            "name": [{"family": "Bench", "given": ["Example"]}],
        },
        "labs": _searchset(make_labs(rng, count, now)),
        "symptoms": _searchset([cramp]),
        "conditions": _searchset(
            [
                condition("cond-cramp", "55300003", "Cramp (finding)", now - timedelta(days=21)),
                condition("cond-htn", "38341003", "Hypertensive disorder", now - timedelta(days=9 * 365)),
                condition("cond-lipid", "55822004", "Hyperlipidemia", now - timedelta(days=6 * 365)),
            ]
        ),
        "medrequests": _searchset(
            [
                order("mr-atorvastatin", "617311", "atorvastatin 40 MG Oral Tablet", now - timedelta(days=400)),
                order("mr-furosemide", "313988", "furosemide 40 MG Oral Tablet", now - timedelta(days=200)),
            ]
        ),
        "medstatements": _searchset([]),
    }


USER_PLACEHOLDER = b"Practitioner/bench-000000000"


def as_new_user(body: bytes, serial: int) -> bytes:
    """``body`` sent by a clinician who has not seen this patient's cards yet, so that the service's repeat check
    (one indexed read) runs and finds nothing, and every call builds and returns its cards, as a busy EHR's many
    clinicians and patients would have it."""
    return body.replace(USER_PLACEHOLDER, b"Practitioner/bench-%09d" % serial, 1)


def hook_bodies(count: int, keys: list[str], variants: int) -> list[bytes]:
    """``variants`` serialized patient-view requests with ``count`` labs each (fresh hookInstance per body)."""
    now = datetime.now(UTC)
    bodies = []
    for seed in range(variants):
        prefetch = make_prefetch(count, now, seed)
        unknown = set(keys) - set(prefetch)
        if unknown:
            raise SystemExit(f"the service asks for prefetch keys this benchmark does not generate: {sorted(unknown)}")
        body = {
            "hookInstance": str(uuid.uuid4()),
            "hook": "patient-view",
            "context": {"userId": USER_PLACEHOLDER.decode(), "patientId": PATIENT_ID},
            "prefetch": {key: prefetch[key] for key in keys},
        }
        bodies.append(json.dumps(body).encode())
    return bodies


# --- servers -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} not healthy after 60 s")


@dataclass(frozen=True)
class Server:
    port: int
    pid: int  # the gunicorn master; its children are the workers

    def cpu_seconds(self) -> float:
        """User + system CPU time of the master and its live workers so far (Linux /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.pid, *self.workers()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the server's CPU time stops growing: the requests of the last window have all been answered."""
        deadline = time.perf_counter() + timeout
        last = self.cpu_seconds()
        while time.perf_counter() < deadline:
            time.sleep(0.05)
            now = self.cpu_seconds()
            if now == last:
                return
            last = now

    def workers(self) -> list[int]:
        """The pids of the master's live children, the workers (Linux /proc)."""
        return [int(pid) for pid in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]

    def owners(self, client_ports: Iterable[int]) -> dict[int, int]:
        """The worker pid holding each client connection, by the client's local port (Linux /proc).

        Waits until a worker has accepted every one of them; after two seconds, gives those accepted by then.
        """
        local = f"0100007F:{self.port:04X}"  # 127.0.0.1:port as /proc/net/tcp writes it
        ports = set(client_ports)
        deadline = time.perf_counter() + 2
        while True:
            inode_port: dict[str, int] = {}
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[1] == local and fields[3] == "01" and remote in ports:  # ESTABLISHED, server side
                    inode_port[f"socket:[{fields[9]}]"] = remote
            found: dict[int, int] = {}
            for pid in self.workers():
                try:
                    links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
                except OSError:  # the worker exited, or closed a descriptor while it was read
                    continue
                found.update((inode_port[link], pid) for link in links if link in inode_port)
            if len(found) == len(ports) or time.perf_counter() > deadline:
                return found
            time.sleep(0.005)

    def split(self, client_ports: Iterable[int]) -> tuple[int, ...]:
        """How many of the clients' connections each worker holds, most first."""
        held = Counter(self.owners(client_ports).values())
        return tuple(sorted((held[pid] for pid in self.workers()), reverse=True))


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, process, log)
            yield Server(port, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- load --------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    busy_seconds: float = 0.0  # wall time of the concurrent windows
    completed_in_windows: int = 0
    cpu_seconds: float = 0.0  # the server's CPU time spent on these requests
    splits: list[tuple[int, ...]] = field(default_factory=list)  # connections per worker, mid-window

    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / len(self.latencies) * 1000

    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    def p95_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[94] * 1000

    def throughput(self) -> float:
        return self.completed_in_windows / self.busy_seconds if self.busy_seconds else 0.0


@dataclass(frozen=True)
class Reply:
    seconds: float
    status: int  # 0 when no answer came
    payload: bytes
    failure: str = ""  # the exception's name when no answer came


class Client:
    """One keep-alive connection, as an EHR's HTTP client pool would hold."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def local_port(self) -> int:
        """The connection's own port (it connects now if it has not yet)."""
        if self.conn.sock is None:
            self.conn.connect()
        return self.conn.sock.getsockname()[1]

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def send(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
        """POST ``body`` to ``path`` as JSON (``headers`` may override that); reconnects after a connection error."""
        started = time.perf_counter()
        try:
            self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = self.conn.getresponse()
            return Reply(time.perf_counter() - started, response.status, response.read())
        except (OSError, http.client.HTTPException) as error:
            self.reconnect()
            return Reply(time.perf_counter() - started, 0, b"", type(error).__name__)

    def post(self, body: bytes) -> tuple[float, bool]:
        reply = self.send(HOOK_PATH, body)
        return reply.seconds, reply.status == 200 and b'"cards"' in reply.payload

    def close(self) -> None:
        self.conn.close()


def sequential(servers: dict[str, Server], bodies: list[bytes], requests: int, results: dict[str, Sample]) -> None:
    """One request at a time, alternating the targets request by request."""
    clients = {name: Client(server.port) for name, server in servers.items()}
    for i in range(requests):
        order = list(clients) if i % 2 == 0 else list(reversed(clients))
        for name in order:
            cpu = servers[name].cpu_seconds()
            seconds, ok = clients[name].post(as_new_user(bodies[i % len(bodies)], i))
            results[name].cpu_seconds += servers[name].cpu_seconds() - cpu
            results[name].latencies.append(seconds)
            results[name].errors += not ok
    for client in clients.values():
        client.close()


def spread_clients(server: Server, count: int) -> list[Client]:
    """``count`` connected clients, spread as evenly as ``count`` allows over the server's workers.

    A gthread worker serves the keep-alive connections it accepted, and which worker accepts a new connection is
    a race. An uneven split (6 + 2, say) splits the latencies in two groups, fast for the clients of the less
    loaded worker and slow for the others, with about as many requests in each, so the median falls anywhere
    between them: over eight windows here one server's 8-client median ranged from 6.7 to 9.1 ms at about the
    same CPU per request, by its split alone; and an 8 + 0 split leaves a worker, and a core, idle. An idle
    server's accepts mostly go to one worker, and a busy one (still answering the last window) hardly ever accepts,
    so once the server is idle connections are opened in batches and each worker keeps at most its share of them;
    the rest are closed. The service and the floor are treated alike.
    """
    server.wait_idle()
    workers = server.workers()
    share = -(-count // len(workers))  # the larger share, when count does not divide evenly
    kept: dict[int, list[Client]] = {pid: [] for pid in workers}
    clients: list[Client] = []
    for _ in range(SPREAD_ATTEMPTS):
        batch = {client.local_port(): client for client in (Client(server.port) for _ in range(count))}
        owners = server.owners(batch)
        for port, client in batch.items():
            held = kept.get(owners.get(port, -1))
            if held is not None and len(held) < share and len(clients) < count:
                held.append(client)
                clients.append(client)
            else:
                client.close()
        if len(clients) == count:
            break
    return clients + [Client(server.port) for _ in range(count - len(clients))]


def concurrent_window(
    server: Server, bodies: list[bytes], clients: int, seconds: float, sample: Sample, *, spread: bool
) -> None:
    """``clients`` threads, each posting back to back on its own connection, for ``seconds``."""
    connections = spread_clients(server, clients) if spread else [Client(server.port) for _ in range(clients)]
    ports = [client.local_port() for client in connections]
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    ends: list[float] = []

    def run(worker: int) -> None:
        client = connections[worker]
        done: list[tuple[float, bool]] = []
        i = worker
        while time.perf_counter() < stop_at:
            done.append(client.post(as_new_user(bodies[i % len(bodies)], i)))
            i += clients
        client.close()
        with lock:
            sample.latencies.extend(s for s, _ in done)
            sample.errors += sum(not ok for _, ok in done)
            sample.completed_in_windows += sum(ok for _, ok in done)
            ends.append(time.perf_counter())

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 2)
    sample.splits.append(server.split(ports))
    for thread in threads:
        thread.join()
    sample.busy_seconds += max(ends) - started


def concurrent(
    servers: dict[str, Server], bodies: list[bytes], plan: Plan, results: dict[str, Sample]
) -> None:
    for round_no in range(plan.rounds):
        names = list(servers) if round_no % 2 == 0 else list(reversed(servers))
        for name in names:
            cpu = servers[name].cpu_seconds()
            concurrent_window(
                servers[name], bodies, plan.clients, plan.window, results[name], spread=plan.spread
            )
            results[name].cpu_seconds += servers[name].cpu_seconds() - cpu


# --- report ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    sequential_requests: dict[int, int]
    clients: int
    window: float
    rounds: int
    spread: bool  # even out the concurrent clients over the workers (spread_clients)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average before the run {load}; client and servers on the same machine over loopback"
    )


def server_env(work: Path) -> dict[str, str]:
    """The servers' environment: a fresh data directory under ``work``, INFO logs, metrics in the service's own
    temporary directory."""
    env = {**os.environ, "CDS_DATA_DIR": str(work / "data"), "CDS_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def service_command(workers: int, threads: int) -> list[str]:
    """The production server as an operator starts it (``cds-service serve``); ``running`` adds the port."""
    return [
        sys.executable, "-m", "cds_service.server.cli", "serve", "--workers", str(workers), "--threads", str(threads)
    ]


def run(args: argparse.Namespace) -> int:
    plan = (
        Plan(args.sizes, {200: 30, 1000: 20, 5000: 8}, args.clients, 2.0, 2, not args.random_split)
        if args.quick
        else Plan(args.sizes, {200: 200, 1000: 150, 5000: 50}, args.clients, 4.0, 3, not args.random_split)
    )
    work = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    env = server_env(work)
    service_cmd = service_command(args.workers, args.threads)
    floor_cmd = [
        sys.executable, str(Path(__file__).with_name("floor_app.py")),
        "--workers", str(args.workers), "--threads", str(args.threads),
    ]
    print(f"machine: {machine()}", flush=True)
    print(f"gunicorn: {args.workers} workers x {args.threads} threads (gthread), keep-alive clients", flush=True)
    rows = []
    try:
        with running(service_cmd, env, work / "service.log") as service, running(
            floor_cmd, env, work / "floor.log"
        ) as floor:
            servers = {"service": service, "floor": floor}
            keys = prefetch_keys(service.port)
            for size in plan.sizes:
                bodies = hook_bodies(size, keys, BODY_VARIANTS)
                warm = {name: Sample() for name in servers}
                sequential(servers, bodies, 6, warm)
                if warm["service"].errors:
                    raise SystemExit(f"the service failed the warm-up at {size} labs; see {work / 'service.log'}")
                seq = {name: Sample() for name in servers}
                sequential(servers, bodies, plan.sequential_requests[size], seq)
                conc = {name: Sample() for name in servers}
                concurrent(servers, bodies, plan, conc)
                rows.append((size, len(bodies[0]), seq, conc))
                print(f"  {size} labs done", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, plan)
    return 0 if goals_met(rows) else 1


def prefetch_keys(port: int) -> list[str]:
    """The prefetch keys the service's discovery document asks for."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/cds-services")
    services = json.loads(conn.getresponse().read())["services"]
    return sorted(next(s for s in services if s["id"] == SERVICE_ID)["prefetch"])


def print_table(rows: list[tuple[int, int, dict[str, Sample], dict[str, Sample]]], plan: Plan) -> None:
    print()
    print(
        "| labs | body | sequential median service / floor (ratio) | sequential p95 service / floor "
        f"| {plan.clients} clients median service / floor (ratio) | {plan.clients} clients p95 service / floor "
        f"| {plan.clients} clients req/s service / floor (ratio) | server CPU per request, sequential "
        f"/ {plan.clients} clients: service, floor | errors |"
    )
    print("|---:|---:|---|---|---|---|---|---|---:|")
    for size, body_bytes, seq, conc in rows:
        s, f, cs, cf = seq["service"], seq["floor"], conc["service"], conc["floor"]
        errors = s.errors + f.errors + cs.errors + cf.errors
        print(
            f"| {size} | {body_bytes / 1024:.0f} KB "
            f"| {s.median_ms():.1f} / {f.median_ms():.1f} ms ({s.median_ms() / f.median_ms():.2f}x) "
            f"| {s.p95_ms():.1f} / {f.p95_ms():.1f} ms "
            f"| {cs.median_ms():.1f} / {cf.median_ms():.1f} ms ({cs.median_ms() / cf.median_ms():.2f}x) "
            f"| {cs.p95_ms():.1f} / {cf.p95_ms():.1f} ms "
            f"| {cs.throughput():.1f} / {cf.throughput():.1f} ({cs.throughput() / cf.throughput():.0%}) "
            f"| {s.cpu_ms_per_request():.1f} / {cs.cpu_ms_per_request():.1f} ms, "
            f"{f.cpu_ms_per_request():.1f} / {cf.cpu_ms_per_request():.1f} ms "
            f"| {errors} |"
        )
    print(f"\nsequential: {plan.sequential_requests} requests per target and size, alternating; concurrent: "
          f"{plan.rounds} windows of {plan.window:g} s per target and size, alternating.")
    how = "spread evenly" if plan.spread else "as the workers accepted them"
    print(f"{plan.clients} clients' connections per worker ({how}), in each window:")
    for size, _, _, conc in rows:
        print(f"  {size} labs: " + "; ".join(
            f"{name} " + " ".join("+".join(map(str, split)) for split in sample.splits)
            for name, sample in conc.items()
        ))


def goals_met(rows: list[tuple[int, int, dict[str, Sample], dict[str, Sample]]]) -> bool:
    checks = []
    for size, _, seq, conc in rows:
        ratio = seq["service"].median_ms() / seq["floor"].median_ms()
        checks.append((f"{size} labs: sequential median <= 1.5x floor", ratio <= 1.5, f"{ratio:.2f}x"))
        ratio = conc["service"].median_ms() / conc["floor"].median_ms()
        checks.append((f"{size} labs: concurrent median <= 1.5x floor", ratio <= 1.5, f"{ratio:.2f}x"))
        share = conc["service"].throughput() / conc["floor"].throughput()
        checks.append((f"{size} labs: concurrent throughput >= 70% of floor", share >= 0.7, f"{share:.0%}"))
        if size == 1000:
            p95 = seq["service"].p95_ms()
            checks.append(("1000 labs: sequential p95 <= 50 ms", p95 <= 50, f"{p95:.1f} ms"))
        errors = sum(x.errors for x in (*seq.values(), *conc.values()))
        checks.append((f"{size} labs: no failed requests", errors == 0, str(errors)))
    print()
    for name, ok, value in checks:
        print(f"{'met' if ok else 'NOT MET':8} {name}: {value}")
    return all(ok for _, ok, _ in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, not a measurement)")
    parser.add_argument(
        "--sizes", type=lambda text: tuple(int(x) for x in text.split(",")), default=(200, 1000, 5000),
        help="lab counts, comma-separated, each of 200, 1000, 5000 (default all three)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for both servers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker for both servers (default 4)")
    parser.add_argument(
        "--random-split", action="store_true",
        help="leave the concurrent clients where the workers' accept race puts them (the method before round 7)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory with the server logs")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
