# syntax=docker/dockerfile:1.7
# icm cloud decoder: CUDA-capable (runs on CPU too: --device cpu), non-root, gRPC health check.
# Build from the repository root:
#   docker build -f deploy/docker/cloud.Dockerfile -t icm-cloud .
# Detector weights and extra model packages come in as mounted volumes (/weights, /models) or,
# for a self-contained image, with --build-arg WEIGHTS_DIR=deploy/docker/weights (put the
# <name>.pt files there; the folder is git-ignored).
# Nothing is downloaded at run time (YOLO_OFFLINE=1).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# -- build ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
# The default index: its Linux torch wheels carry their own CUDA libraries and run on CPU too.
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
# The pins of scripts/install.sh (CI checks that they agree: tests/test_deploy.py).
RUN python -m pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY protos/ protos/
COPY icm_app/ icm_app/
COPY icm_codec/ icm_codec/
COPY analytics/ analytics/
COPY icm_rpc/ icm_rpc/
COPY edge_encoder/ edge_encoder/
COPY cloud_decoder/ cloud_decoder/
COPY deploy/docker/healthcheck.py deploy/docker/healthcheck.py
# The same install command as CI (scripts/install.sh), with the cloud extra; then the stubs.
RUN python -m pip install -e ".[cloud]" \
    && python -c "from icm_rpc.protos import generate; generate(force=True)"
# Optional: bake detector weights in (a folder of <name>.pt inside the build context).
ARG WEIGHTS_DIR=deploy/docker/no-weights
COPY ${WEIGHTS_DIR}/ /weights/

# -- runtime -------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 ICM_DETECTOR_DIR=/weights ICM_MODEL_PATH=/models \
    ICM_CLOUD_DB=/var/lib/icm/cloud.sqlite3 ICM_METRICS_PORT=9100 ICM_LOG_FORMAT=json \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# python3 for the venv; libgl1/libglib2.0-0 for OpenCV (pulled in by ultralytics)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 icm \
    && useradd --system --uid 10001 --gid icm --home-dir /var/lib/icm --create-home icm \
    && mkdir -p /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /weights /weights
WORKDIR /var/lib/icm
USER 10001:10001
VOLUME ["/var/lib/icm"]
# 50051: edges (mutual TLS); 50052: analysts, peers and health checks; 9100: /metrics
EXPOSE 50051 50052 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "grpc", "127.0.0.1:50052"]
ENTRYPOINT ["icm", "cloud"]
CMD ["--listen", "0.0.0.0:50051", "--analyst-listen", "0.0.0.0:50052", "--metrics-port", "9100"]
