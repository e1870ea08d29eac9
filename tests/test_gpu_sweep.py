"""The GPU sweep's CPU rehearsal (``benchmarks/gpu_sweep.sh --tiny``): every step runs through the same script
as on the GPU machine, the throughput table is printed and logged, and each run gets a line in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_sweep.sh"
RECIPES = ["ride-cifar10-lt-if100", "cifar10-lt-if100-ce"]


@pytest.mark.slow
def test_the_tiny_sweep_prints_the_table_and_fills_the_store(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ, "OUT": str(out), "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        "bash", str(SCRIPT), "--tiny", "--settings", "fp32", "--table-epochs", "2", "--recipes", *RECIPES,
        "--later-recipes", "--budget-s", "600",
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    output = finished.stdout
    assert finished.returncode == 0, output[-3000:] + finished.stderr[-3000:]
    assert "CUDA tests: passed" in output and "no CUDA device" in output
    for recipe in RECIPES:
        assert f"| `{recipe}` | fp32 | fp32 |" in output and f"| `{recipe}` | recipe |" in output
        assert f"{recipe}: done" in output
    assert (out / "sweep.log").read_text() == output

    rows = [json.loads(line) for line in (out / "step_times.jsonl").read_text().splitlines()]
    assert {(r["recipe"], r["setting"]) for r in rows} == {(r, s) for r in RECIPES for s in ("fp32", "recipe")}
    assert all(r["images_per_s"] > 0 and r["device"].startswith("cpu-") for r in rows)
    store = [json.loads(line) for line in (out / "results" / "digits-lt-if100.jsonl").read_text().splitlines()]
    assert [line["recipe"] for line in store] == RECIPES
    for line in store:
        assert line["budget"] == 1 and line["seed"] == 0 and line["data"]["name"] == "digits-lt"
        assert line["device"].startswith("cpu-") and 0 <= line["test_last"]["main"]["top1"] <= 1
