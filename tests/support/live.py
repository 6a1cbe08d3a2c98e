"""Run the real production server (``cds-service serve``: gunicorn) on a free loopback port for a test."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from .governance import EVERY_CALL_ANEW, as_environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    """Until ``url`` answers 200; fails with the process's log when it exits first or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {seconds} s")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], seconds: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``seconds``."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve(
    tmp: Path, env: Mapping[str, str] | None = None, args: tuple[str, ...] = (), workers: int = 2
) -> Iterator[str]:
    """Start ``cds-service serve`` with its own data directory; yield its base URL; stop it afterwards."""
    port = free_port()
    environment = {**os.environ, "CDS_DATA_DIR": str(tmp / "data"), **as_environment(EVERY_CALL_ANEW), **(env or {})}
    log = open(tmp / f"serve-{port}.log", "wb")  # noqa: SIM115 - open while the server runs; closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.server.cli", "serve",
         "--port", str(port), "--workers", str(workers), *args],
        env=environment,
        cwd=tmp,  # an unrelated working directory: the installed package must carry its rules and schemas
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base + "/healthz", process, tmp / f"serve-{port}.log")
        yield base
    finally:
        stop_process(process, 15)
        log.close()
