# icm web console: CPU only, non-root, no state (caches only). Build from the repository root:
#   docker build -f deploy/docker/console.Dockerfile -t icm-console .
# It talks to the cloud's analyst port (ICM_CLOUD, TLS with ICM_TLS_CA) with ICM_ANALYST_TOKEN;
# people log in with ICM_CONSOLE_TOKEN / ICM_CONSOLE_ADMIN_TOKEN (docs/console.md). The `icm`
# command imports the codec package, hence torch (CPU wheels). The base image is a build
# argument pinned by digest (deploy/docker/base-images.lock); the Python packages are those of
# deploy/docker/requirements/console.txt (exact versions, hashes checked).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
# The pins of scripts/install.sh (CI checks that they agree: tests/test_deploy.py). Declared
# here, before the first stage, so that the build stage's first layers read the same in every
# image of this project and images built with the same values share the torch layer.
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple

# -- build: the virtual environment ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# torch first, in a layer of its own that depends only on the base and the torch build
# arguments: the largest part, shared by images built with the same ones (and cached).
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY . .
# Then the lock: exact versions, hashes required, no resolution (it also sets the versions of
# torch's own dependencies, and the build requirements); the project without dependencies,
# whose build (setup.py) generates the gRPC stubs into it.
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
