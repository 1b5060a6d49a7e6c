#!/usr/bin/env bash
# bash experiments/gpu_check.sh [OUT_DIR] [STAGE ...]   (stages: tests fsdp_bench throughput refcache lease dose
# rounds compare; default all)
#
# Everything the project measures on one GPU, each stage writing its log and tables under OUT_DIR
# (default outputs/gpu): the CUDA-only tests (FlexAttention backward, bf16 autocast training), the fast path
# against TRL's DPOTrainer (135M and a random SmolLM2-1.7B shape; prefixes 256/1024/2048; --flex), the headline
# benchmark first (`fsdp_bench`: 1024-token prefixes, TRL's fastest configuration against localdpo's fast path with
# a cached and a live reference and through the trainer's FSDP2 sharding on one GPU; pairs/s, peak memory, the
# first step's loss, MFU against the device's dense bf16 peak; under 10 minutes, one command:
# `bash experiments/gpu_check.sh outputs/gpu fsdp_bench`; not yet run), the
# reference cache against a live reference, the `gpu` preset cut down to fit a 15-minute lease (`lease`: about
# 11 min on one H200 with its earlier 3-value grid; docs/results/gpu-lease; now the 6-value grid 1e-7..3e-5,
# not yet run), the negative signal's dose-response on running_sum sized like the lease run (`dose`: 5 seeds,
# sft's lr chosen on validation; not yet run on a GPU), steering in rounds on running_sum sized for a lease
# (`rounds`: the rounds-cpu design, 3 rounds x sft/ldpo/ldpo+sft x 3 seeds; ~11 min estimated from the lease
# run's per-run times, not yet run) and `localdpo compare --preset gpu` (about 75 min on one
# H200 with the earlier grid, estimated from the lease run's per-run times). Stages run in the order
# given, so a machine with a per-command time limit can run them one call each. Installs nothing: run
# `make install` first (a GPU box keeps its own torch build).
set -euo pipefail
out=${1:-outputs/gpu}
shift || true
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests fsdp_bench throughput refcache lease dose rounds compare)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-offline}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
stage_fsdp_bench() {  # the headline on a GPU: 2 models x 1 prefix x 4 contenders, 3 timed steps each
  python experiments/bench_throughput.py --device cuda --models 135m 1.7b --prefix-lengths 1024 \
    --only "precompute_ref, GC off" "cache +pack +span" "live +pack +span" --fsdp --no-max-batch --budget-min 8 \
    --out "$out/fsdp_bench.md" 2>&1 | tee "$out/fsdp_bench.log"
}

# Steering in rounds (`--preset rounds-cpu`) on running_sum for a 15-minute lease: 12 selection runs (3 variants x
# 4 learning rates) and 3 variants x 3 seeds x 3 rounds = 27 final runs, of 30 steps x 32 steers (~0.15 s a step
# on one H200, an estimate: never run), each later round on the chain's own mistakes on 300 fresh prompts; task
# accuracy on 200 held-out prompts after every round.
rounds_stage() {
  python -m localdpo compare --preset rounds-cpu --out "$out/rounds-lease" name=rounds-lease task=running_sum \
    steers.train_prompts=400 steers.heldout_prompts=200 select.validation_prompts=100 eval_batch_size=128 \
    rounds.train_prompts=300 rounds.max_steps=30 run.train.max_steps=30 run.train.batch_size=32 \
    run.eval.batch_size=64 run.eval.max_steers=null run.wandb.mode=disabled run.train.progress=false 2>&1 \
    | tee "$out/rounds.log"
}

for stage in "${stages[@]}"; do
  case "$stage" in
    fsdp_bench) stage_fsdp_bench ;;
    tests) python -m pytest -q -m gpu -rs tests 2>&1 | tee "$out/gpu_tests.log" ;;
    throughput) python experiments/bench_throughput.py --device cuda --flex --out "$out/throughput.md" 2>&1 \
                  | tee "$out/throughput.log" ;;
    refcache) python experiments/bench_refcache.py --device cuda --steps 30 --batch-size 8 --steers 64 2>&1 \
                | tee "$out/refcache.log" ;;
    lease) python -m localdpo compare --preset gpu --out "$out/compare-gpu-lease" name=gpu-lease task=addition \
             "seeds=[0,1,2]" steers.train_prompts=600 steers.heldout_prompts=300 \
             "select.variants={}" select.validation_prompts=150 \
             run.train.max_steps=60 run.eval.task_every=0 run.wandb.mode=disabled run.train.progress=false 2>&1 \
             | tee "$out/lease.log" ;;
    dose) python -m localdpo compare --preset dose --out "$out/dose-lease" name=dose-lease task=running_sum \
            steers.train_prompts=600 steers.heldout_prompts=300 select.validation_prompts=150 \
            run.train.max_steps=60 run.train.batch_size=32 run.wandb.mode=disabled run.train.progress=false 2>&1 \
            | tee "$out/dose.log" ;;
    rounds) rounds_stage ;;
    compare) python -m localdpo compare --preset gpu --out "$out/compare-gpu" 2>&1 | tee "$out/compare.log" ;;
    *) echo "unknown stage $stage (tests fsdp_bench throughput refcache lease dose rounds compare)" >&2; exit 2 ;;
  esac
done
echo "results under $out"
