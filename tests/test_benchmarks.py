"""Every benchmark script runs end to end at a toy size and prints its table, so that a change of the library's
interfaces cannot leave a benchmark broken until someone next measures with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# script, toy arguments, a line its table must print
TOY_RUNS = [
    ("bench_mdcs_shike.py", ["--steps", "1", "--warmup", "0", "--root", "/nonexistent", "--threads", "1"], "SHIKE stage 2"),
    ("bench_deit.py", ["--steps", "1", "--warmup", "0", "--batch-size", "4", "--models", "deit_lt_tiny_patch4_32", "--threads", "1"],
     "deit_lt_tiny_patch4_32      deit_lt"),
    ("bench_aglu.py", ["--steps", "1", "--warmup", "0", "--batch-size", "4", "--activations", "relu", "aglu", "--threads", "1"], "aglu"),
    ("bench_metaformer.py", ["--steps", "1", "--warmup", "0", "--batch-size", "2", "--sizes", "32", "--threads", "1"], "images/s"),
    ("bench_data.py", ["--batches", "2", "--batch-size", "16", "--root", "/nonexistent"], "crop+flip"),
    ("bench_ride.py", ["--recipe", "digits-ride", "--epochs", "2", "--variants", "bf16", "--threads", "1"], "bf16"),
    ("bench_train.py", ["--dataset", "digits-lt", "--epochs", "1", "--model-steps", "1", "--settings", "fp32"],
     "fp32"),
    ("bench_ppot.py", ["--n", "300", "--k", "10", "--rhos", "0.5", "--sp2ot-n", "300", "--sp2ot-k", "10", "--threads", "1"],
     "| library |"),
    ("cluster_features.py", ["--seeds", "0", "--epochs", "1", "--jobs", "1", "--threads", "1"], "| sp2ot |"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, arguments, expected", TOY_RUNS, ids=[run[0] for run in TOY_RUNS])
def test_benchmark_runs_at_toy_size(script: str, arguments: list[str], expected: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGTAIL_DATA": str(tmp_path / "no-data")}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout


@pytest.mark.slow
def test_budget_compare_trains_and_prints_its_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "budget_compare.py"), "--budget", "1", "--runs", str(tmp_path / "runs"),
         "--set", "data.val_per_class=2", "--", "digits-ce"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "digits-ce [logit_adjusted]" in result.stdout


def test_every_benchmark_script_is_run_by_a_test() -> None:
    covered = {script for script, _, _ in TOY_RUNS} | {"budget_compare.py"}
    # reproduce.py, gpu_sweep.py and pack_gpu_data.py have their own test modules; _timing.py is a helper
    own_tests = {"reproduce.py", "gpu_sweep.py", "pack_gpu_data.py", "_timing.py"}
    assert {path.name for path in BENCHMARKS.glob("*.py")} == covered | own_tests
