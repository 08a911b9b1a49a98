# syntax=docker/dockerfile:1.7
# icm web console: CPU only, non-root, no state (caches only). Build from the repository root:
#   docker build -f deploy/docker/console.Dockerfile -t icm-console .
# It talks to the cloud's analyst port (ICM_CLOUD, TLS with ICM_TLS_CA) with ICM_ANALYST_TOKEN;
# people log in with ICM_CONSOLE_TOKEN / ICM_CONSOLE_ADMIN_TOKEN (docs/console.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the project installed as CI installs it ---------------
FROM ${PYTHON_IMAGE} AS build
# The `icm` command imports the codec package, hence torch: CPU wheels keep the image small.
# The pins are those of scripts/install.sh (CI checks that they agree: tests/test_deploy.py).
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
RUN python -m pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY protos/ protos/
COPY icm_app/ icm_app/
COPY icm_codec/ icm_codec/
COPY analytics/ analytics/
COPY icm_rpc/ icm_rpc/
COPY edge_encoder/ edge_encoder/
COPY cloud_decoder/ cloud_decoder/
COPY console/ console/
COPY deploy/docker/healthcheck.py deploy/docker/healthcheck.py
# The same install command as CI (scripts/install.sh), with the console extra only; then the
# gRPC stubs, generated at build time.
RUN python -m pip install -e ".[console]" \
    && python -c "from icm_rpc.protos import generate; generate(force=True)"

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    ICM_CONSOLE_LISTEN=0.0.0.0:8080 ICM_LOG_FORMAT=json
RUN groupadd --system --gid 10001 icm \
    && useradd --system --uid 10001 --gid icm --home-dir /var/lib/icm --create-home icm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /var/lib/icm
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "http", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["icm", "console"]
CMD ["--listen", "0.0.0.0:8080"]
