# icm web console: CPU only, non-root, no state (caches only). Build from the repository root:
#   docker build -f deploy/docker/console.Dockerfile -t icm-console .
# It talks to the cloud's analyst port (ICM_CLOUD, TLS with ICM_TLS_CA) with ICM_ANALYST_TOKEN;
# people log in with ICM_CONSOLE_TOKEN / ICM_CONSOLE_ADMIN_TOKEN (docs/console.md). No torch:
# the console is a gRPC client and a web server (the `console` extra; tests/test_wheel.py serves
# its pages from a wheel installed without torch). The base image is a build argument pinned by
# digest (deploy/docker/base-images.lock); the Python packages are those of
# deploy/docker/requirements/console.txt (exact versions, hashes checked).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
ARG PIP_INDEX_URL=https://pypi.org/simple

# -- build: the virtual environment ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# The lock: exact versions, hashes required, no resolution (with the build requirements); the
# project without dependencies, whose build (setup.py) generates the gRPC stubs into it.
RUN pip install --no-deps --require-hashes --index-url "${PIP_INDEX_URL}" \
        -r deploy/docker/requirements/console.txt \
    && pip install --no-deps --no-build-isolation --no-index .

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG ICM_BUILD_REVISION=unknown
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    ICM_CONSOLE_LISTEN=0.0.0.0:8080 ICM_LOG_FORMAT=json ICM_BUILD_REVISION=${ICM_BUILD_REVISION}
RUN groupadd --system --gid 10001 icm \
    && useradd --system --uid 10001 --gid icm --home-dir /var/lib/icm --create-home icm
COPY --from=build /src/deploy/docker/healthcheck.py /app/deploy/docker/healthcheck.py
WORKDIR /var/lib/icm
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "http", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["icm", "console"]
CMD ["--listen", "0.0.0.0:8080"]
# The environment last, as the very last instruction: the largest layer, copied once (a
# storage driver without copy-on-write, such as vfs, copies the whole file system for every
# instruction after it).
COPY --from=build /opt/venv /opt/venv
