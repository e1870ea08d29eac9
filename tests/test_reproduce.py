"""The reproduction runner: trains what the results store lacks, appends one line per finished run, and
regenerates the tables (mean ± std over seeds) in the results README and the project README."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from longtail.errors import LongtailError
from longtail.methods.recipes import resolve

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"
spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

TINY = ["data.args.image_size=8", "data.val_per_class=2", "data.batch_size=32"]  # seconds a run


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Path]:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{reproduce.README_BEGIN}\nold table\n{reproduce.README_END}\n\nMore.\n")
    return {"runs": tmp_path / "runs", "results": tmp_path / "results", "readme": readme}


def run_main(store: dict[str, Path], *args: str) -> None:
    reproduce.main(
        ["--runs", str(store["runs"]), "--results", str(store["results"]), "--readme", str(store["readme"]), *args]
    )


@pytest.mark.slow
def test_trains_what_the_store_lacks_and_tables_mean_and_spread(store: dict[str, Path], one_thread: None) -> None:
    run_main(store, "--dataset", "digits-lt-if10", "--budget", "1", "--seeds", "0", "1", "--set", *TINY, "--", "digits-ce")
    lines = reproduce.read_store(store["results"] / "digits-lt-if10.jsonl")
    assert [(r["recipe"], r["seed"], r["budget"], r["overrides"]) for r in lines] == [
        ("digits-ce", 0, 1, TINY), ("digits-ce", 1, 1, TINY)
    ]
    record = lines[0]
    assert re.fullmatch(r"cpu-\d+core-[a-z0-9]+(-bf16)?", record["device"]) and record["precision"] == "fp32"
    assert record["epochs"] == 1
    assert record["commit"] and record["wall_s"] > 0 and record["images_per_s"] > 0
    main = record["test_last"]["main"]
    assert 0 <= main["top1"] <= 1 and set(main) >= {"top1", "many", "medium", "few"}
    run_dir = reproduce.run_folder(store["runs"], "digits-lt-if10", "digits-ce", TINY, 1, 0)
    assert json.loads((run_dir / "summary.json").read_text())["last_test"]["main"]["top1"] == main["top1"]

    top1 = [r["test_last"]["main"]["top1"] for r in lines]
    expected = f"{100 * statistics.fmean(top1):.1f} ± {100 * statistics.stdev(top1):.1f}"
    table = (store["results"] / "README.md").read_text()
    assert f"| 2 | {expected} |" in table and "budget=1 epochs" in table
    readme = store["readme"].read_text()
    assert expected in readme and "old table" not in readme and readme.endswith("More.\n")

    # A second call finds both runs in the store and trains nothing: the store is unchanged.
    before = (store["results"] / "digits-lt-if10.jsonl").read_text()
    run_main(store, "--dataset", "digits-lt-if10", "--budget", "1", "--seeds", "0", "1", "--set", *TINY, "--", "digits-ce")
    assert (store["results"] / "digits-lt-if10.jsonl").read_text() == before


def _finished_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "last_test": {"main": {"top1": 0.5, "many": 0.6, "medium": 0.4, "few": None, "top5": 0.9}},
        "best_test": {"main": {"top1": 0.55, "many": 0.6, "medium": 0.5, "few": None}},
    }))
    (run_dir / "provenance.json").write_text(json.dumps(
        {"commit": "abc", "device": "cpu-2core", "threads": 1, "precision": "bf16"}))
    (run_dir / "config.yaml").write_text("data: {name: digits-lt, imbalance: 10.0, selection: shuffle}\n")
    (run_dir / "log.jsonl").write_text(
        "".join(json.dumps({"epoch_s": s, "images_per_s": r}) + "\n" for s, r in [(10, 100), (20, 300), (30, 200)]))


def test_a_finished_run_folder_is_collected_not_retrained(store: dict[str, Path], monkeypatch) -> None:
    _finished_run(reproduce.run_folder(store["runs"], "d", "digits-ce", [], 3, 2))
    monkeypatch.setattr(reproduce, "train", lambda *a, **k: pytest.fail("a finished run must not be retrained"))
    [record] = reproduce.reproduce("d", ["digits-ce"], [2], 3, runs=store["runs"], results_dir=store["results"])
    assert record["commit"] == "abc" and record["wall_s"] == 60 and record["images_per_s"] == 200
    assert record["test_last"] == {"main": {"top1": 0.5, "many": 0.6, "medium": 0.4, "few": None}}
    assert reproduce.read_store(store["results"] / "d.jsonl") == [record]


def test_a_run_started_by_other_code_is_not_resumed_and_does_not_stop_the_others(store: dict[str, Path]) -> None:
    run_dir = reproduce.run_folder(store["runs"], "d", "digits-ce", [], 1, 0)
    run_dir.mkdir(parents=True)
    (run_dir / "provenance.json").write_text(json.dumps({"commit": "0" * 40}))
    (run_dir / "checkpoint.pt").write_bytes(b"an epoch of other code")
    _finished_run(reproduce.run_folder(store["runs"], "d", "digits-ce", [], 1, 1))
    with pytest.raises(LongtailError, match="digits-ce seed 0: .* started by code at 0000"):
        reproduce.reproduce("d", ["digits-ce"], [0, 1], 1, runs=store["runs"], results_dir=store["results"])
    assert [r["seed"] for r in reproduce.read_store(store["results"] / "d.jsonl")] == [1]


def test_a_run_other_code_started_but_never_checkpointed_is_taken_over(store: dict[str, Path], monkeypatch) -> None:
    run_dir = reproduce.run_folder(store["runs"], "d", "digits-ce", [], 1, 0)
    run_dir.mkdir(parents=True)
    (run_dir / "provenance.json").write_text(json.dumps({"commit": "0" * 40}))

    def finish(config, folder):
        provenance = (folder / "provenance.json").read_text()
        _finished_run(folder)
        (folder / "provenance.json").write_text(provenance)

    monkeypatch.setattr(reproduce, "train", finish)
    [record] = reproduce.reproduce("d", ["digits-ce"], [0], 1, runs=store["runs"], results_dir=store["results"])
    assert record["commit"] == reproduce.code_commit()


def test_a_run_another_runner_holds_is_skipped(store: dict[str, Path], monkeypatch) -> None:
    run_dir = reproduce.run_folder(store["runs"], "d", "digits-ce", [], 1, 0)
    monkeypatch.setattr(reproduce, "train", lambda *a, **k: pytest.fail("a claimed run must not be trained"))
    with reproduce.claimed(run_dir) as first:
        with reproduce.claimed(run_dir) as second:
            assert first and not second
        assert reproduce.reproduce("d", ["digits-ce"], [0], 1, runs=store["runs"], results_dir=store["results"]) == []
    assert not run_dir.exists() and not (store["results"] / "d.jsonl").exists()


def test_an_override_names_the_run_of_the_same_seed_and_budget(tmp_path: Path) -> None:
    runs = reproduce.budget_folder(tmp_path, "d", 30)
    overrides = ["method.args.teacher={runs}/teacher-recipe/seed{seed}", "data.augment={resized_crop: null}"]
    assert reproduce.run_overrides(overrides, 30, 2, runs) == [
        f"method.args.teacher={tmp_path}/d/budget30/teacher-recipe/seed2", "data.augment={resized_crop: null}",
        "budget=30", "train.seed=2", "train.progress=false",
    ]
    teacher_run = reproduce.run_folder(tmp_path, "d", "teacher-recipe", [], 30, 2)
    assert str(teacher_run) == reproduce.run_overrides(overrides, 30, 2, runs)[0].split("=", 1)[1]


def test_one_store_holds_one_dataset(store: dict[str, Path]) -> None:
    with pytest.raises(LongtailError, match="different datasets"):
        reproduce.reproduce("d", ["digits-ce", "cifar10-lt-if100-ce"], [0], 1, runs=store["runs"],
                            results_dir=store["results"])


def test_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(LongtailError, match="results markers"):
        reproduce.replace_between_markers(readme, "table")


def queued_runs(tmp_path: Path) -> list[tuple[str, tuple[str, ...], int | None, int]]:
    """(recipe, overrides, budget, seed) of every run the CIFAR-10-LT queue asks reproduce.py for, each
    checked to resolve to a config."""
    calls = tmp_path / "calls.jsonl"
    recorder = tmp_path / "python"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(0o755)
    script = SCRIPT.parent / "reproduce_cifar10_lt.sh"
    subprocess.run(["bash", str(script), "--runs", str(tmp_path / "runs")], check=True,
                   env={**os.environ, "PYTHON": str(recorder)})
    runs = []
    for argv in map(json.loads, calls.read_text().splitlines()):
        assert argv[0] == str(SCRIPT)
        args = reproduce.argument_parser().parse_args(argv[1:])
        assert args.dataset == "cifar10-lt-if100"
        for recipe in args.recipes:
            for seed in args.seeds:
                folder = reproduce.budget_folder(args.runs, args.dataset, args.budget)
                resolve(recipe, reproduce.run_overrides(args.set, args.budget, seed, folder))
                runs.append((recipe, tuple(args.set), args.budget, seed))
    return runs


def test_the_cifar10_lt_queue_names_recipes_and_overrides_that_resolve(tmp_path: Path) -> None:
    assert len(queued_runs(tmp_path)) == 3 * 15 + 3 * 6 + 3 * 3 + 2


def test_every_declared_comparison_compares_runs_of_the_queue(tmp_path: Path) -> None:
    queued = {(recipe, overrides, budget) for recipe, overrides, budget, _ in queued_runs(tmp_path)}
    comparisons = reproduce.read_comparisons(reproduce.RESULTS_DIR)["cifar10-lt-if100"]
    for comparison in comparisons:
        sides = [comparison[side] for side in ("treatment", "control")]
        keys = [(side["recipe"], tuple(side.get("overrides", []))) for side in sides]
        budgets = [{budget for recipe, overrides, budget in queued if (recipe, overrides) == key} for key in keys]
        assert budgets[0] & budgets[1], f"{comparison['name']}: the queue trains no budget of both sides"


@pytest.mark.parametrize("text", [
    "d:\n  - name: half\n    treatment: {recipe: a}\n",
    "d:\n  - name: half\n    treatment: {recipe: a, overrides: x=1}\n    control: {recipe: a}\n",
    "d:\n  - half\n",
])
def test_a_malformed_comparison_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / reproduce.COMPARISONS).write_text(text)
    with pytest.raises(LongtailError, match="half.*needs exactly name, treatment and control"):
        reproduce.read_comparisons(tmp_path)


def test_a_comparisons_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / reproduce.COMPARISONS).write_text("d: [unclosed\n")
    with pytest.raises(LongtailError, match="not valid YAML"):
        reproduce.read_comparisons(tmp_path)


def _record(recipe: str, seed: int, heads: dict[str, tuple[float, float]]) -> dict:
    return {"recipe": recipe, "overrides": [], "budget": 30, "seed": seed,
            "test_last": {head: {"top1": top1, "many": 0.9, "medium": medium, "few": None}
                          for head, (top1, medium) in heads.items()}}


def test_gains_over_the_baselines_are_marked_against_the_larger_seed_spread() -> None:
    records = [
        *(_record("d-ce", s, {"main": (0.50 + 0.01 * s, 0.20)}) for s in range(3)),
        *(_record("d-ldam-drw", s, {"main": (0.60 + 0.04 * s, 0.40)}) for s in range(3)),
        *(_record("method", s, {"main": (0.70 + 0.01 * s, 0.41), "expert_0": (0.1, 0.1)}) for s in range(3)),
        _record("single", 0, {"main": (0.80, 0.50)}),
    ]
    table = reproduce.gains_table(records)
    assert table[0] == "| recipe [head] | n | All − CE | All − LDAM-DRW | Medium − CE | Medium − LDAM-DRW |"
    # All − LDAM-DRW: +7.0 points, the larger spread is LDAM-DRW's 4.0; Medium − LDAM-DRW: +1.0 against 0.0
    assert table[2:] == [
        "| `method` | 3 | +20.0 ✓ | +7.0 ✓ | +21.0 ✓ | +1.0 ✓ |",
        "| `single` | 1 | +29.0 | +16.0 | +30.0 | +10.0 |",
    ]
    records[-2]["test_last"]["main"]["top1"] = 0.62  # one seed falls: the method's spread 4.9 > its gain 3.7
    assert "| `method` | 3 | +16.7 ✓ | +3.7 ✗ |" in reproduce.gains_table(records)[2]
    assert reproduce.gains_table([r for r in records if r["recipe"] != "d-ldam-drw"]) == []


def test_controlled_comparisons_subtract_the_control_where_both_sides_ran() -> None:
    records = [
        *(_record("m", s, {"main": (0.70 + 0.01 * s, 0.50), "stage1": (0.60, 0.10)}) for s in range(3)),
        *(dict(_record("m", s, {"main": (0.65, 0.40 + 0.02 * s)}), overrides=["x=1"]) for s in range(2)),
    ]
    comparisons = [
        {"name": "x", "treatment": {"recipe": "m", "overrides": ["x=1"]}, "control": {"recipe": "m"}},
        {"name": "stage 2", "treatment": {"recipe": "m"}, "control": {"recipe": "m", "head": "stage1"}},
        {"name": "never ran", "treatment": {"recipe": "m"}, "control": {"recipe": "other"}},
    ]
    assert reproduce.comparisons_table(records, comparisons) == [
        "| comparison | n | Δ All | Δ Many | Δ Medium |",
        "|---|---|---|---|---|",
        # All: 65.0 − 71.0 against the larger spread 1.0; Medium: 41.0 − 50.0 against 1.4 (x=1's spread)
        "| x | 2 | -6.0 ✗ | +0.0 ✗ | -9.0 ✗ |",
        "| stage 2 | 3 | +11.0 ✓ | +0.0 ✗ | +40.0 ✓ |",
    ]
    assert reproduce.comparisons_table(records[:3], comparisons[:1]) == []


def test_a_bad_comparisons_file_stops_the_tables_with_one_message(store: dict[str, Path]) -> None:
    store["results"].mkdir(parents=True)
    (store["results"] / reproduce.COMPARISONS).write_text("d: [unclosed\n")
    with pytest.raises(SystemExit, match="^error: .*comparisons.yaml is not valid YAML"):
        run_main(store, "--tables-only")
