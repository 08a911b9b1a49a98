# syntax=docker/dockerfile:1.7
# icm edge encoder: CPU only, small, non-root. Build from the repository root:
#   docker build -f deploy/docker/edge.Dockerfile -t icm-edge .
# Model packages: the shipped defaults are in the package; others come in as a mounted volume
# (ICM_MODEL_PATH=/models). Nothing is downloaded at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the project installed as CI installs it ---------------
FROM ${PYTHON_IMAGE} AS build
# CPU wheels of torch keep the image small. The pins are those of scripts/install.sh (CI checks
# that they agree: tests/test_deploy.py).
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
COPY icm_codec/ icm_codec/
COPY analytics/ analytics/
COPY icm_rpc/ icm_rpc/
COPY edge_encoder/ edge_encoder/
COPY cloud_decoder/ cloud_decoder/
COPY deploy/docker/healthcheck.py deploy/docker/healthcheck.py
# The same install command as CI (scripts/install.sh), with the edge extra only; then the
# gRPC stubs, generated at build time.
RUN python -m pip install -e ".[edge]" \
    && python -c "from icm_rpc.protos import generate; generate(force=True)"

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    ICM_SPOOL_DIR=/var/lib/icm/spool ICM_METRICS_PORT=9101 ICM_LOG_FORMAT=json \
    ICM_HEALTH_LISTEN=0.0.0.0:50053
RUN groupadd --system --gid 10001 icm \
    && useradd --system --uid 10001 --gid icm --home-dir /var/lib/icm --create-home icm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /var/lib/icm
USER 10001:10001
VOLUME ["/var/lib/icm"]
EXPOSE 9101 50053
# gRPC health of the edge process: NOT_SERVING while capture stalls (the camera is gone)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "grpc-plaintext", "127.0.0.1:50053"]
ENTRYPOINT ["icm", "edge"]
CMD ["--help"]
