#!/usr/bin/env bash
# The GPU sweep as one command, from the repo root of a lent GPU machine (docs/benchmarks.md, "On a GPU"):
# prints the GPU, installs the carried wheels and runs benchmarks/gpu_sweep.py with this script's arguments;
# all of it is logged to $OUT/sweep.log too.
# PYTHON (default python3), WHEELS (default .whl) and OUT (default runs/gpu-sweep) may be set.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"
out="${OUT:-runs/gpu-sweep}"
mkdir -p "$out"

{
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    fi
    if compgen -G "$wheels/*.whl" >/dev/null; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$wheels"/*.whl || exit
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # The device's python has no longtail installed: the scripts import it from this checkout.
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$python" benchmarks/gpu_sweep.py --out "$out" "$@"
} 2>&1 | tee "$out/sweep.log"
