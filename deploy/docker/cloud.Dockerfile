# icm cloud decoder, non-root, gRPC health check. Build from the repository root:
#   docker build -f deploy/docker/cloud.Dockerfile -t icm-cloud .                 # GPU (CUDA)
#   docker build -f deploy/docker/cloud.Dockerfile -t icm-cloud:cpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .         # CPU only
# A slim Python base, not a CUDA one: PyPI's torch wheels carry their own CUDA libraries (the
# nvidia-* wheels), and the NVIDIA container runtime mounts the driver. The base image is a
# build argument pinned by digest (deploy/docker/base-images.lock); the Python packages are
# those of deploy/docker/requirements/cloud.txt (exact versions, hashes checked), with
# opencv-python-headless as the only OpenCV. Detector weights and extra model packages come in
# as mounted volumes (/weights, /models) or, for a self-contained image, with
# --build-arg WEIGHTS_DIR=deploy/docker/weights (put the <name>.pt files there; the folder is
# git-ignored). Nothing is downloaded at run time (YOLO_OFFLINE=1).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
# The pins of scripts/install.sh (CI checks that they agree: tests/test_deploy.py). Declared
# here, before the first stage, so that the build stage's first layers read the same in every
# image of this project and images built with the same values share the torch layer.
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
ARG TORCH_INDEX_URL=https://pypi.org/simple
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
        -r deploy/docker/requirements/cloud.txt \
    && pip install --no-deps --no-build-isolation --no-index .

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG ICM_BUILD_REVISION=unknown
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    ICM_DETECTOR_DIR=/weights ICM_MODEL_PATH=/models \
    ICM_CLOUD_DB=/var/lib/icm/cloud.sqlite3 ICM_METRICS_PORT=9100 ICM_LOG_FORMAT=json \
    YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR=/tmp/ultralytics \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ICM_BUILD_REVISION=${ICM_BUILD_REVISION}
RUN groupadd --system --gid 10001 icm \
    && useradd --system --uid 10001 --gid icm --home-dir /var/lib/icm --create-home icm \
    && mkdir -p /models
COPY --from=build /src/deploy/docker/healthcheck.py /app/deploy/docker/healthcheck.py
# Optional: bake detector weights in (a folder of <name>.pt inside the build context).
ARG WEIGHTS_DIR=deploy/docker/no-weights
COPY ${WEIGHTS_DIR}/ /weights/
WORKDIR /var/lib/icm
USER 10001:10001
VOLUME ["/var/lib/icm"]
# 50051: edges (mutual TLS); 50052: analysts, peers and health checks; 9100: /metrics
EXPOSE 50051 50052 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "grpc", "127.0.0.1:50052"]
ENTRYPOINT ["icm", "cloud"]
CMD ["--listen", "0.0.0.0:50051", "--analyst-listen", "0.0.0.0:50052", "--metrics-port", "9100"]
# The environment last, as the very last instruction: the largest layer, copied once (a
# storage driver without copy-on-write, such as vfs, copies the whole file system for every
# instruction after it).
COPY --from=build /opt/venv /opt/venv
