"""The ``cds-service`` command: serve, evaluate a request file, check the rules and the site's code maps, show the
settings."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError, Settings, load_config, masked_settings
from .logs import configure_logging, logging_dict

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when it is first imported


def gunicorn_options(
    host: str, port: int, workers: int, threads: int, log_level: str, forwarded_allow_ips: Sequence[str] = ()
) -> dict[str, Any]:
    """The gunicorn settings of ``serve`` (the benchmark's floor app runs under the same ones)."""
    from .gunicorn_logger import ServiceLogger

    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        # whose X-Forwarded-Proto (and the other secure-scheme headers) gunicorn believes: by default no one's,
        # where gunicorn's own default believes any process on this host (127.0.0.1)
        "forwarded_allow_ips": ",".join(forwarded_allow_ips),
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,  # cds_service.requests logs one JSON line per request
        "logger_class": ServiceLogger,  # which does not build access lines either (accesslog alone does not stop it)
        "loglevel": log_level.lower(),
        "logconfig_dict": logging_dict(log_level),
        # heartbeats off slow disks; only where this user may write (a chroot or hardened image may not allow it)
        "worker_tmp_dir": "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None,
        "control_socket_disable": True,  # one fixed path per user would clash between instances on one host
        "preload_app": True,
        "pre_fork": _tune_gc,
    }


GC_YOUNG_THRESHOLD = 10_000  # Python's default is 700 allocations


def _tune_gc(_server: Any, _worker: Any) -> None:
    """In the master, before each worker is forked: keep the garbage collector off what was loaded at start.

    A hook call with 1000 labs allocates tens of thousands of objects; with the defaults the collector runs
    dozens of times per call and its full passes walk every object loaded at start (rules, terminology, schemas).
    ``gc.freeze`` moves those out of its reach (which also keeps the workers' copy-on-write pages shared) and a
    higher young-generation threshold makes it run less often (measured in bench/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def run_gunicorn(app: Any, options: dict[str, Any]) -> None:
    """Serve the WSGI ``app`` with gunicorn until it is stopped (gunicorn's documented way to embed it)."""
    from gunicorn.app.base import BaseApplication

    from .gunicorn_errors import install

    install()  # gunicorn's own error answers (414, 431, broken framing) as OperationOutcome, not HTML

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Server().run()


def _serve(args: argparse.Namespace) -> int:
    from ..security.modes import check_bind_safety

    settings = load_config(args.config)  # checked before anything else happens: a bad value stops here
    refusal = check_bind_safety(args.host, settings, args.insecure)
    if refusal:
        print(f"cds-service: {refusal}", file=sys.stderr)
        return 2
    own_metrics_dir = _prepare_metrics_dir()
    from ..app import create_app

    def remove_metrics_dir(_server: Any = None) -> None:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)

    try:
        app = create_app(settings)  # loads and checks rules, value sets and the database before any port is opened
        _serve_metrics_apart(settings, app)
    except Exception:
        remove_metrics_dir()
        raise

    options = gunicorn_options(
        args.host, args.port, args.workers, args.threads, settings.log_level, settings.forwarded_allow_ips
    )
    options.update(post_fork=_after_fork, child_exit=_child_exit, on_exit=remove_metrics_dir)
    run_gunicorn(app, options)
    return 0


def _serve_metrics_apart(settings: Settings, app: Any) -> None:
    """With ``metrics_bind``, serve the metrics on that address from this (gunicorn's master) process."""
    from ..api.state import EXTENSION_KEY
    from .metrics import FiringRateAnomalies, metrics_address, serve_metrics

    address = metrics_address(settings)
    if address is None:
        return
    try:
        serve_metrics(address, FiringRateAnomalies(app.extensions[EXTENSION_KEY].firing_rate_anomalies))
    except OSError as exc:
        problem = exc.strerror or exc
        raise ConfigError(f"metrics_bind = {settings.metrics_bind!r}: cannot listen there ({problem})") from None


def _prepare_metrics_dir() -> str | None:
    """Point prometheus-client's multiprocess mode at an empty directory; return it if this run created it.

    An operator-set ``PROMETHEUS_MULTIPROC_DIR`` (a Kubernetes emptyDir, say) is emptied of an earlier run's
    files, which would otherwise be added in; otherwise a fresh temporary directory is made and removed on exit.
    """
    configured = os.environ.get(METRICS_DIR_ENV)
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        for stale in Path(configured).glob("*.db"):
            stale.unlink()
        return None
    os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="cds-metrics-")
    return os.environ[METRICS_DIR_ENV]


def _child_exit(_server: Any, worker: Any) -> None:
    """A worker is gone: drop its live gauges from the multiprocess metrics (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _after_fork(_server: Any, worker: Any) -> None:
    """Each worker opens its own database connections (the master's pool must not be shared after fork)."""
    worker.app.callable.extensions["cds_service"].engine.dispose(close=False)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import Runtime, answer_hook, read_request, validate_envelope
    from ..wire.errors import UNKNOWN_SERVICE, CdsError, operation_outcome

    settings = load_config(args.config, overrides={"now": args.now} if args.now else None)
    configure_logging(settings.log_level)
    runtime = Runtime.load(settings)
    try:
        body = read_request(runtime, Path(args.request).read_bytes())
        validate_envelope(body)
        service = runtime.registry.for_hook(body["hook"])
        if service is None:
            raise CdsError(UNKNOWN_SERVICE, "No service answers the hook the request names.")
        answer = answer_hook(runtime, service, body)
    except CdsError as error:
        print(json.dumps(operation_outcome(error.kind, error.detail), indent=2))  # the answer a server would give
        return 1
    print(json.dumps(answer.response, indent=2))
    return 0


SCAN_INSTALL = "pip install 'cds-service[scan]'"


def _scan(args: argparse.Namespace) -> int:
    """Exit 0 when patients were scanned, 1 when none could be (the summary says why), 2 for bad arguments."""
    try:
        from ..scan.command import ScanRequest, report_line, scan
        from ..scan.export import ExportFailed, is_url
        from ..scan.hooks import HookNotScannable
        from ..scan.routing import TemplateNotSupported
        from ..scan.smart import SmartKeyError, smart_client
        from ..scan.source import SourceError
    except ModuleNotFoundError as missing:
        if (missing.name or "").split(".")[0] in {"dask", "distributed", "pandas", "pyarrow"}:
            print(f"cds-service scan needs Dask: {SCAN_INSTALL}", file=sys.stderr)
            return 2
        raise
    settings = load_config(args.config, overrides={"now": args.now} if args.now else None)
    configure_logging(settings.log_level)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's start and stop are not news
    try:
        smart = (smart_client(args.smart_client_id, args.smart_key_file, args.smart_key_id)
                 if is_url(args.source) else None)  # a folder needs no authorization
    except SmartKeyError as error:
        print(f"cds-service scan: {error}", file=sys.stderr)
        return 2
    request = ScanRequest(
        source=args.source,
        out=Path(args.out),
        settings=settings,
        hook=args.hook,
        scheduler=args.scheduler,
        workers=args.workers,
        pseudonymise=args.pseudonymise,
        block_size=args.block_size,
        progress=sys.stderr.isatty(),
        group=args.group,
        patient_level=args.patient_level,
        since=args.since,
        export_dir=Path(args.export_dir) if args.export_dir else None,
        smart=smart,
    )
    try:
        summary = scan(request)
    except ExportFailed as error:
        print(f"cds-service scan: the export failed, nothing was scanned: {error}", file=sys.stderr)
        return 1
    except (HookNotScannable, SourceError, TemplateNotSupported) as error:
        print(f"cds-service scan: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the scheduler cannot be reached, the output folder cannot be written
        print(f"cds-service scan: {error}", file=sys.stderr)
        return 2
    print(report_line(summary), file=sys.stderr)
    if summary["patients"]["scanned"] == 0:
        print("cds-service scan: no patient could be scanned (summary.json says why)", file=sys.stderr)
        return 1
    return 0


def _config_show(args: argparse.Namespace) -> int:
    print(json.dumps(masked_settings(load_config(args.config)), indent=2))
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from ..rules.check import run_check

    settings = load_config(args.config)  # with concept_maps_dir set, the site's code maps are checked too
    return run_check(Path(args.rules_dir) if args.rules_dir else None, concept_maps_dir=settings.concept_maps_dir)


def _terminology_check(args: argparse.Namespace) -> int:
    from ..facts.concept_maps import run_check
    from ..facts.terminology import Terminology

    overrides = {"concept_maps_dir": args.concept_maps_dir} if args.concept_maps_dir else None
    folder = load_config(args.config, overrides=overrides).concept_maps_dir
    if folder is None:
        print("cds-service: terminology check: no concept_maps_dir is set (nor --concept-maps-dir given)",
              file=sys.stderr)
        return 2
    return run_check(folder, Terminology.load(), print)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service with gunicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    serve.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    serve.add_argument("--config", help="TOML configuration file (also CDS_CONFIG)")
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without JWT authentication"
    )
    serve.set_defaults(run=_serve)

    evaluate = commands.add_parser("evaluate", help="print the CDS Hooks response for a request file")
    evaluate.add_argument("request", help="CDS Hooks request JSON file")
    evaluate.add_argument("--config", help="TOML configuration file")
    evaluate.add_argument("--now", help="evaluation time, ISO 8601 (default: configuration, else the clock)")
    evaluate.set_defaults(run=_evaluate)

    scan = commands.add_parser("scan", help="run the rules over a Bulk FHIR export, patient by patient, on Dask")
    scan.add_argument("source", help="folder of Bulk FHIR NDJSON files (.ndjson, .ndjson.gz), or a FHIR server's "
                      "base URL to export from (Bulk Data $export; token in CDS_SCAN_BEARER_TOKEN, or SMART "
                      "Backend Services with the --smart-* options)")
    scan.add_argument("--out", required=True, help="output folder (worklist.ndjson, summary.json, report.html)")
    scan.add_argument("--now", help="evaluation time, ISO 8601 (default: configuration, else the clock)")
    scan.add_argument("--scheduler", help="address of a running Dask scheduler (default: a local cluster)")
    scan.add_argument("--workers", type=_positive, help="local worker processes (default: one per core)")
    scan.add_argument("--hook", default="patient-view", help="the hook to answer: patient-view (default) or "
                      "encounter-start (each patient's most recent Encounter in the export); not the order hooks, "
                      "whose draft orders an export lacks")
    scan.add_argument("--pseudonymise", action="store_true",
                      help="HMAC-SHA256 pseudonyms for patient (and encounter) ids")
    scan.add_argument("--block-size", type=_positive, help="bytes of NDJSON per task (default 64 MiB)")
    scan.add_argument("--group", help="with a server: export this Group's patients (Group/ID/$export)")
    scan.add_argument("--patient-level", action="store_true", help="with a server: Patient/$export")
    scan.add_argument("--since", help="with a server: only resources changed since (the export's _since)")
    scan.add_argument("--export-dir", help="with a server: where to save the export (default OUT/export)")
    scan.add_argument("--smart-client-id", help="with a server: SMART Backend Services client id (also "
                      "CDS_SCAN_SMART_CLIENT_ID)")
    scan.add_argument("--smart-key-file", help="with a server: the client's private key, PEM, RSA (RS384) or EC "
                      "P-384 (ES384) (also CDS_SCAN_SMART_KEY_FILE)")
    scan.add_argument("--smart-key-id", help="with a server: the kid of that key in the client's registered JWKS "
                      "(also CDS_SCAN_SMART_KEY_ID)")
    scan.add_argument("--config", help="TOML configuration file (also CDS_CONFIG)")
    scan.set_defaults(run=_scan)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective settings as JSON, secrets masked")
    show.add_argument("--config", help="TOML configuration file (also CDS_CONFIG)")
    show.set_defaults(run=_config_show)

    rules = commands.add_parser("rules", help="rule set tools")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate every rule and value set and run every case")
    check.add_argument("--rules-dir", help="rules folder (default: the shipped rule set)")
    check.add_argument("--config", help="TOML configuration file (also CDS_CONFIG): its concept_maps_dir is checked")
    check.set_defaults(run=_rules_check)

    terminology = commands.add_parser("terminology", help="site terminology tools")
    terminology_commands = terminology.add_subparsers(dest="terminology_command", required=True)
    maps = terminology_commands.add_parser("check", help="check the site's ConceptMaps (concept_maps_dir)")
    maps.add_argument("--config", help="TOML configuration file (also CDS_CONFIG)")
    maps.add_argument("--concept-maps-dir", help="folder of ConceptMap JSON files (default: concept_maps_dir)")
    maps.set_defaults(run=_terminology_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("INFO")  # until the settings are loaded: create_app and evaluate apply their log_level
    try:
        return int(args.run(args))
    except ConfigError as error:
        print(f"cds-service: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
