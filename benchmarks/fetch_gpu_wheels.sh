#!/usr/bin/env bash
# The wheels the GPU machine lacks, downloaded into .whl/ for its Python 3.12 (x86-64); benchmarks/gpu_sweep.sh
# installs them there. Its image holds every runtime dependency of longtail (torch, torchvision, timm, numpy,
# scipy, scikit-learn, PyYAML, tqdm, tensorboard, matplotlib, pillow, ninja) and the test tools but not POT,
# which tests/test_clustering_ppot.py imports (numpy and scipy, its needs, are there).
# POT 0.9.6.post1, not 0.9.7: 0.9.7's wheel is 33 MB (a 175 MB extension inside), 0.9.6.post1's 1.5 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl POT==0.9.6.post1
