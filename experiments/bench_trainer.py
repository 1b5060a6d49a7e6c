"""CPU/GPU throughput of each method on the same steers: `python experiments/bench_trainer.py [--steps 8] [key=value ...]`.

Each method runs in its own process (clean peak memory) on the embedded SmolLM2-135M-Instruct and the
12 colour-list steers shipped with the tests; prints median step time, tokens/s and peak memory, with the
step-time ratio against `ldpo` measured in the same run. The first step (warm-up) is excluded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ldpo", "dpo", "sft", "sft_full")


def run_method(method: str, steps: int, overrides: list[str], root: Path) -> dict[str, float]:
    run_dir = root / method
    command = [
        sys.executable, "-m", "localdpo", "train", "--config", str(REPO / "experiments/configs/ldpo_cpu.yaml"),
        f"data.train_steers={REPO / 'tests/trainer/data/color_steers.jsonl'}", f"method={method}",
        f"run_dir={run_dir}", f"train.max_steps={steps}", "train.grad_accum=1", "eval.at_start=false",
        "eval.every=0", "eval.drift=false", "data.eval_fraction=0.25", "checkpoint.every=0",
        "checkpoint.save_final=false", "wandb.mode=disabled", "train.progress=false", *overrides,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/step_time_s" in r][1:]
    return {
        "step_s": statistics.median(r["perf/step_time_s"] for r in rows),
        "tokens_s": statistics.median(r["perf/tokens_per_s"] for r in rows),
        "peak_gb": max(r["perf/peak_memory_gb"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"{'method':<10}{'step s (median)':>17}{'vs ldpo':>9}{'tokens/s':>10}{'peak GB':>9}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for method in METHODS:
            r = run_method(method, args.steps, args.overrides, Path(tmp))
            base = base or r["step_s"]
            print(
                f"{method:<10}{r['step_s']:>17.3f}{r['step_s'] / base:>9.2f}{r['tokens_s']:>10.0f}{r['peak_gb']:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
