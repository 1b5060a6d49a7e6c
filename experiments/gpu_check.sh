#!/usr/bin/env bash
# bash experiments/gpu_check.sh [OUT_DIR] [STAGE ...]       (stages: tests throughput refcache compare; default all)
#
# Everything the project measures on one GPU, each stage writing its log and tables under OUT_DIR
# (default outputs/gpu): the CUDA-only tests (FlexAttention backward, bf16 autocast training), the fast path
# against TRL's DPOTrainer (135M and a random SmolLM2-1.7B shape; prefixes 256/1024/2048; --flex), the
# reference cache against a live reference, and `localdpo compare --preset gpu`. Stages run in the order
# given, so a machine with a per-command time limit can run them one call each. Installs nothing: run
# `make install` first (a GPU box keeps its own torch build).
set -euo pipefail
out=${1:-outputs/gpu}
shift || true
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests throughput refcache compare)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-offline}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
for stage in "${stages[@]}"; do
  case "$stage" in
    tests) python -m pytest -q -m gpu -rs tests 2>&1 | tee "$out/gpu_tests.log" ;;
    throughput) python experiments/bench_throughput.py --device cuda --flex --out "$out/throughput.md" 2>&1 \
                  | tee "$out/throughput.log" ;;
    refcache) python experiments/bench_refcache.py --device cuda --steps 30 --batch-size 8 --steers 64 2>&1 \
                | tee "$out/refcache.log" ;;
    compare) python -m localdpo compare --preset gpu --out "$out/compare-gpu" 2>&1 | tee "$out/compare.log" ;;
    *) echo "unknown stage $stage (tests throughput refcache compare)" >&2; exit 2 ;;
  esac
done
echo "results under $out"
