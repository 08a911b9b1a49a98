#!/usr/bin/env bash
# Install the project into the active Python environment (the recipe from ../shared/ENVIRONMENT.md).
# torch 2.15.0 + torchvision 0.29.2 are pinned together: an older torch wheel on these machines has
# no matching torchvision, and compressai / ultralytics import torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.15.0" "torchvision==0.29.2"
python -m pip install -q -e ".[edge,cloud,console,train,eval,dev]"
# the editable install's build (setup.py) generated the gRPC stubs of protos/ into icm_rpc/_generated
# (git-ignored); setuptools only warns when that step fails, so say it here
python -m icm_rpc.build_stubs --check
