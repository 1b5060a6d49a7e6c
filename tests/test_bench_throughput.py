"""experiments/bench_throughput.py: the run is planned from a measured first step, ratios come from rounds,
and a run that cannot fit its budget says so up front instead of timing contenders out."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_plan_takes_the_most_timed_steps_that_fit_and_more_rounds_on_a_tie(bench):
    """Timed step 20 s, 35 s before it (start, load, warm-up), 3 visits a round: a visit of s steps is 35 + 20s seconds.

    Budget 540 s: 2 rounds x 2 steps = 2 * 3 * 75 = 450 s (4 timed steps per contender) beats 3 x 1 (495 s)
    and 1 x 3 (285 s), 3 each; 2 x 3 (570 s) and 3 x 2 (675 s) do not fit.
    """
    plan = bench.plan_run(20.0, 35.0, 3, step_choices=range(1, 4), round_choices=range(1, 4), budget_s=540)
    assert plan == bench.Plan(steps=2, rounds=2, seconds=450.0)
    unbounded = bench.plan_run(
        20.0, 35.0, 3, step_choices=range(1, 4), round_choices=range(1, 4), budget_s=None
    )
    assert unbounded == bench.Plan(steps=3, rounds=3, seconds=855.0)
    # the smallest plan, 1 round of 1 step, needs 3 * 55 = 165 s
    assert bench.plan_run(20.0, 35.0, 3, step_choices=range(1, 4), round_choices=(1,), budget_s=164) is None


def test_ratio_is_per_round_against_that_rounds_fastest_trl(bench):
    """Round 1: TRL's fastest is B (8 s), localdpo 4 s: 2.0x. Round 2: TRL's fastest is A (20 s), localdpo 5 s: 4.0x."""
    group = [
        {"trainer": "trl", "status": "ok", "round_step_s": [10.0, 20.0]},
        {"trainer": "trl", "status": "ok", "round_step_s": [8.0, 30.0]},
        {"trainer": "trl", "status": "timeout (60 s)"},
        {"trainer": "localdpo", "status": "ok", "round_step_s": [4.0, 5.0]},
    ]
    assert bench.ratios_to_fastest_trl(group[3], group) == [2.0, 4.0]
    assert bench.ratios_to_fastest_trl(group[2], group) == []


def test_combine_visits_takes_medians_over_rounds_and_keeps_a_failure(bench):
    visits = [
        {"status": "ok", "step_times": [3.0, 1.0, 2.0], "precompute_s": 1.0, "peak_mib": 100.0, "loss": 0.5},
        {"status": "ok", "step_times": [4.0, 6.0], "precompute_s": 3.0, "peak_mib": 120.0, "loss": 0.5},
    ]
    row = bench.combine_visits(visits)
    assert row["round_step_s"] == [2.0, 5.0] and row["step_s"] == 3.5
    assert (row["precompute_s"], row["peak_mib"], row["loss"], row["losses_agree"]) == (2.0, 110.0, 0.5, True)
    failed = bench.combine_visits([visits[0], {"status": "OOM"}])
    assert failed["status"] == "OOM" and "step_s" not in failed


@pytest.mark.slow
def test_a_run_that_cannot_fit_says_so_after_the_first_step(bench, capsys):
    """Regression: `--quick` spent its fixed 8 minutes on TRL and printed `timeout (75 s)` for localdpo."""
    code = bench.main(["--device", "cpu", "--models", "tiny", "--prefix-lengths", "16", "--only", "cache +pack +span",
                       "--budget-min", "0.01"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "bench_throughput: will not fit:" in out and "Run instead with --budget-min" in out
    assert "timeout" not in out and "plan:" not in out


@pytest.mark.slow
def test_two_rounds_give_every_contender_a_time_and_a_ratio(bench, tmp_path, capsys):
    out_path = tmp_path / "bench.md"
    code = bench.main(["--device", "cpu", "--models", "tiny", "--prefix-lengths", "16", "--only", "precompute_ref, GC off",
                       "cache +pack +span", "--rounds", "2", "--steps", "1", "--out", str(out_path)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "plan: 2 round(s) x 2 contenders" in printed
    rows = json.loads(Path(str(out_path) + ".json").read_text())["rows"]
    assert [row["contender"] for row in rows] == ["TRL precompute_ref, GC off", "localdpo cache +pack +span"]
    assert all(row["status"] == "ok" and len(row["round_step_s"]) == 2 for row in rows)
    assert rows[0]["loss"] == pytest.approx(
        rows[1]["loss"], abs=1e-5
    )  # the same DPO loss on the same weights
    # the visit order alternates: round 2 runs the contenders in reverse
    visits = re.findall(r"^  tiny prefix +16  round (\d)  (\S.*?)\s{2,}", printed, flags=re.MULTILINE)
    assert visits == [
        ("1", "TRL precompute_ref, GC off"),
        ("1", "localdpo cache +pack +span"),
        ("2", "localdpo cache +pack +span"),
        ("2", "TRL precompute_ref, GC off"),
    ]
    table = out_path.read_text()
    assert "| tiny | 16 | localdpo cache +pack +span |" in table and "2 round(s) (alternating order)" in table


@pytest.mark.slow
def test_the_fsdp_contender_runs_the_fast_path_sharded_with_the_same_first_loss(bench, tmp_path, capsys):
    """`--fsdp` (gpu_check.sh's `fsdp_bench` stage, dry on CPU): the trainer's FSDP2 path on a one-process group
    takes the same first step as the unsharded fast path (fp32, gathers are copies)."""
    out_path = tmp_path / "bench.md"
    code = bench.main(["--device", "cpu", "--models", "tiny", "--prefix-lengths", "16", "--only", "cache +pack +span",
                       "--fsdp", "--rounds", "1", "--steps", "1", "--out", str(out_path)])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    rows = json.loads(Path(str(out_path) + ".json").read_text())["rows"]
    assert [row["contender"] for row in rows] == ["localdpo cache +pack +span", "localdpo cache +pack +span (FSDP2)"]
    assert all(row["status"] == "ok" for row in rows)
    assert rows[1]["loss"] == rows[0]["loss"]


def test_gpu_check_has_the_fsdp_bench_stage_and_parses():
    script = SCRIPT.parent / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "stage_fsdp_bench()" in text and "fsdp_bench) stage_fsdp_bench ;;" in text
    assert "--prefix-lengths 1024" in text and "--fsdp" in text
