"""The ``cds-service`` command: serve, evaluate a request file, check the rules."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .security.modes import check_bind_safety

    if args.config:
        os.environ["CDS_CONFIG"] = str(Path(args.config).resolve())
    config = load_config()
    refusal = check_bind_safety(args.host, config, args.insecure)
    if refusal:
        print(f"cds-service: {refusal}", file=sys.stderr)
        return 2
    from .app import create_app

    app = create_app()  # loads and checks rules, value sets and the database before any worker starts

    class Server(BaseApplication):  # gunicorn's documented way to embed it
        def load_config(self) -> None:
            options = {
                "bind": f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}",
                "workers": args.workers,
                "worker_class": "gthread",
                "threads": args.threads,
                "timeout": 30,
                "graceful_timeout": 10,
                "keepalive": 5,
                "accesslog": None,
                "preload_app": True,
                "post_fork": _after_fork,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Server().run()
    return 0


def _after_fork(_server: Any, worker: Any) -> None:
    """Each worker opens its own database connections (the master's pool must not be shared after fork)."""
    worker.app.callable.extensions["cds_service"].engine.dispose(close=False)


def _evaluate(args: argparse.Namespace) -> int:
    from .errors import UNKNOWN_SERVICE, CdsError, operation_outcome
    from .evaluation import Runtime, answer_hook, validate_envelope
    from .jsonbody import parse_body

    config = load_config(args.config, overrides={"now": args.now} if args.now else None)
    runtime = Runtime.load(config)
    try:
        body = parse_body(Path(args.request).read_bytes(), max_depth=int(config["max_json_depth"]))
        validate_envelope(body)
        service = runtime.registry.for_hook(body["hook"])
        if service is None:
            raise CdsError(UNKNOWN_SERVICE, f"No service answers the hook {body['hook']!r}.")
        answer = answer_hook(runtime, service, body)
    except CdsError as error:
        print(json.dumps(operation_outcome(error.kind, error.detail), indent=2), file=sys.stderr)
        return 1
    print(json.dumps(answer.response, indent=2))
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from .rules.check import run_check

    return run_check(Path(args.rules_dir) if args.rules_dir else None)


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

    rules = commands.add_parser("rules", help="rule set tools")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate every rule and value set and run every case")
    check.add_argument("--rules-dir", help="rules folder (default: the shipped rule set)")
    check.set_defaults(run=_rules_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("CDS_LOG_LEVEL", "INFO"), stream=sys.stderr)
    try:
        return int(args.run(args))
    except ConfigError as error:
        print(f"cds-service: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
