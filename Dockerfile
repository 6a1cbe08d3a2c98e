# Small production image: the installed package (rules, value sets and schemas inside it) run by gunicorn
# as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY fixtures ./fixtures
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 cds
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER cds
ENV CDS_DATA_DIR=/home/cds/data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
# Binding beyond loopback needs trusted JWT issuers in the configuration (CDS_CONFIG or CDS_TRUSTED_ISSUERS);
# without them serve refuses to start.
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080"]
