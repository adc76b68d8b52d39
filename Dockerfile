# One image for every role: a container runs `batchman <role>` (api, consumer, migrate, simulator,
# dagster-code-server, dagster-webserver, dagster-daemon); the default is the API.
#   docker build -t batchman .            docker run --env-file .env batchman batchman migrate
# Dependencies come from the hashed lock (requirements.lock) in the build stage; nothing is installed
# when a container starts. Checked by `make lint` (hadolint) and tests/test_deploy.py.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The lock alone first: this layer, the slow one, is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY batch_pipeline ./batch_pipeline
COPY intake_api ./intake_api
# The project itself, its dependencies being the locked ones above.
RUN pip install --no-cache-dir --no-deps .

FROM python:${PYTHON_VERSION}-slim-bookworm
# A fixed uid, so volumes and Kubernetes' runAsUser agree with the image.
RUN groupadd --system --gid 10001 batchman \
    && useradd --system --uid 10001 --gid batchman --home-dir /app --no-create-home batchman \
    && mkdir -p /app/data /opt/dagster/home/storage \
    && chown -R batchman:batchman /app /opt/dagster
COPY --from=build /opt/venv /opt/venv
# The Dagster instance (storage in Postgres through DAGSTER_PG_URL, which `batchman dagster-*` sets from
# DATABASE_URL). Compose mounts deploy/compose/dagster.yaml over it; the Helm chart brings its own.
COPY --chown=batchman:batchman dagster.yaml /opt/dagster/home/dagster.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/app/data \
    DAGSTER_HOME=/opt/dagster/home
WORKDIR /app
USER 10001
EXPOSE 4000
# For the API role (its cheap liveness route); Compose and Kubernetes give the other roles their own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '4000'), timeout=4)"]
# No ENTRYPOINT: Dagster's Helm chart and its K8sRunLauncher run `dagster api …` in this image as is.
CMD ["batchman", "api", "--host", "0.0.0.0"]
