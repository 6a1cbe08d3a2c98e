"""Real infrastructure for multi-instance tests: a throwaway PostgreSQL cluster, nginx, and service instances.

Everything listens on 127.0.0.1 on free ports and lives in its own temporary directory, removed afterwards.
PostgreSQL and nginx come from the Debian packages (``apt-get install -y postgresql nginx``); when their binaries
are absent the caller skips with the reason :func:`missing_binaries` gives. PostgreSQL refuses to run as root, so
as root the cluster runs as the ``postgres`` account the Debian package creates.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .governance import EVERY_CALL_ANEW, as_environment
from .live import free_port, stop_process, wait_until_answering

START_SECONDS = 60


def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def missing_binaries(nginx: bool = True) -> str | None:
    """Why the multi-instance infrastructure (PostgreSQL, and nginx unless ``nginx`` is false) cannot run here,
    or None when it can."""
    absent = [name for name in ("initdb", "pg_ctl") if _postgres_bin(name) is None]
    if nginx and shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        absent.append("nginx")
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install -y postgresql nginx)"
    return None


def _as_postgres(command: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@dataclass(frozen=True)
class Postgres:
    url: str  # SQLAlchemy URL of the test database


@contextmanager
def postgres_cluster(database: str = "cds") -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free loopback port with password authentication and one database."""
    home = Path(tempfile.mkdtemp(prefix="cds-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, user="postgres")
    data, port, password = home / "data", free_port(), os.urandom(12).hex()
    password_file = home / "password"
    password_file.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(password_file, user="postgres")
    pg_ctl = str(_postgres_bin("pg_ctl"))

    def run(*command: str) -> None:
        done = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=START_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")

    try:
        run(str(_postgres_bin("initdb")), "-D", str(data), "-U", "cds", f"--pwfile={password_file}",
            "--auth-host=scram-sha-256", "--auth-local=peer", "--no-sync")
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
        run(pg_ctl, "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "-t", str(START_SECONDS), "start")
        with psycopg.connect(host="127.0.0.1", port=port, user="cds", password=password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield Postgres(f"postgresql+psycopg://cds:{password}@127.0.0.1:{port}/{database}")
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


class ServiceInstance:
    """One ``cds-service serve`` (gunicorn master and workers) in its own process group, so it can be killed whole."""

    def __init__(self, home: Path, env: Mapping[str, str], workers: int = 2):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"instance-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the instance runs; closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.server.cli", "serve",
             "--port", str(self.port), "--workers", str(workers)],
            env={
                **os.environ,
                "CDS_DATA_DIR": str(home / f"data-{self.port}"),
                **as_environment(EVERY_CALL_ANEW),
                **env,
            },
            cwd=home,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        """Until ``/readyz`` answers 200 (rules loaded, database reachable)."""
        wait_until_answering(self.base_url + "/readyz", self.process, self.log_path, START_SECONDS)

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: a crash, not a graceful stop."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@contextmanager
def service_instances(home: Path, count: int, env: Mapping[str, str]) -> Iterator[list[ServiceInstance]]:
    """``count`` instances started together, ready when yielded, stopped afterwards."""
    instances = [ServiceInstance(home, env) for _ in range(count)]
    try:
        for instance in instances:
            instance.wait_ready()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


_NGINX_CONF = """\
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/client_body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    client_max_body_size 20m;
    upstream cds {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://cds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            # A dead instance refuses or resets the connection: try the next one. Hook calls only read, and
            # feedback is idempotent (a repeat is stored once), so retrying a POST is safe here.
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"""


@contextmanager
def nginx_proxy(upstreams: Sequence[str]) -> Iterator[str]:
    """nginx on a free loopback port balancing over ``upstreams`` (``host:port``); yields its base URL."""
    home = Path(tempfile.mkdtemp(prefix="cds-nginx-"))
    os.chmod(home, 0o755)  # as root, nginx workers run as an unprivileged user and need the temp paths
    port = free_port()
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
    conf = home / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(home=home, port=port, servers=servers))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with open(home / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [nginx, "-p", str(home), "-c", str(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=stderr
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base + "/healthz", process, home / "stderr.log", START_SECONDS)
        yield base
    finally:
        stop_process(process, 10)
        shutil.rmtree(home, ignore_errors=True)
