#!/usr/bin/env bash
# Downloads (on a machine that reaches PyPI) the wheels bench/gpu/run.py needs on a GPU machine without
# network that lacks them: TRL and datasets with their pure-Python dependencies the GPU machine does not
# have (dill, multiprocess), and Liger-Kernel. For Python 3.12 on manylinux x86_64, into .whl/ at the
# repository root (git ignores it). Install them there with:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#
# datasets 4.8 rather than the newest: it accepts pyarrow >= 21 and huggingface-hub >= 0.25, so it
# imports against whatever the GPU machine already has.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
WHEELS=(trl==1.16.0 datasets==4.8.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5)
mkdir -p .whl
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
du -sh .whl
ls .whl
