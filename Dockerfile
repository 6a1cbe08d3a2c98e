# Small production image: the installed package (rules, value sets, schemas and viewer inside it) served by
# gunicorn (`cds-service serve`) as a non-root user. Build stage: a virtual environment holding the exact,
# hash-checked pins of requirements.lock (scripts/lock makes it) and the package; final stage: python slim
# plus that environment, no compiler, no pip cache, no source tree.
# The base is pinned by tag; append @sha256:<digest> to both FROM lines to pin its content too.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY fixtures ./fixtures
# Built with the locked setuptools and wheel; neither they nor pip are needed at run time.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CDS_DATA_DIR=/home/cds/data
# The data directory (the SQLite database when CDS_DATABASE_URL is unset) is made here, owned by the service
# user, so a volume mounted on it starts out writable by that user.
RUN groupadd --gid 10001 cds \
    && useradd --uid 10001 --gid cds --create-home --shell /usr/sbin/nologin cds \
    && install --directory --owner=10001 --group=10001 --mode=0700 /home/cds/data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/cds
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# Listening beyond loopback needs trusted JWT issuers (CDS_CONFIG=/path/config.toml or CDS_TRUSTED_ISSUERS) and
# the URL clients call (CDS_PUBLIC_BASE_URL, which JWT aud is checked against): without them `serve` exits with a
# message saying so. Arguments after the image name are appended to the entrypoint: local demos may append
# --insecure (deploy/compose does); production must not.
ENTRYPOINT ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD []
