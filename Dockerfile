# Small production image: the installed package (rules, value sets, schemas and viewer inside it) served by
# gunicorn (`cds-service serve`) as a non-root user. Build stage: wheels for the package and every dependency;
# final stage: python slim plus those wheels, no compiler, no pip cache, no source tree.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY fixtures ./fixtures
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CDS_DATA_DIR=/home/cds/data
RUN groupadd --gid 10001 cds && useradd --uid 10001 --gid cds --create-home --shell /usr/sbin/nologin cds
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels cds-service && rm -rf /wheels
USER 10001:10001
WORKDIR /home/cds
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# Listening beyond loopback needs trusted JWT issuers (CDS_CONFIG=/path/config.toml or CDS_TRUSTED_ISSUERS):
# without them `serve` exits with a message saying so. Local demos may append --insecure to the command
# (deploy/compose does); production must not.
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080"]
