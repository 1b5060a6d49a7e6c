#!/usr/bin/env bash
# bash experiments/keep_state.sh OUT_DIR STATE_DIR
#
# What a comparison needs to resume elsewhere, copied from its output directory OUT_DIR to STATE_DIR (e.g. a
# committed docs/results/<name>/state): the saved config, the steer files with their manifests (a rounds
# comparison's per-chain steers under rounds/ too), and every
# finished run's record.json (final and selection runs). No W&B runs, metrics logs, caches or weights. To
# resume: copy STATE_DIR's contents into an output directory and run the same `localdpo compare` command on it
# (`--out` that directory): the recorded runs are kept, the rest are trained.
set -euo pipefail
out=${1:?usage: keep_state.sh OUT_DIR STATE_DIR}
state=${2:?usage: keep_state.sh OUT_DIR STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
(cd "$out" && find . \( -name compare_config.yaml -o -name 'steers*.jsonl' -o -name 'steers*.json' \
                       -o -path '*/runs/*/record.json' -o -path '*/select/*/record.json' \) -type f -print0 \
  | xargs -0 -r cp --parents -t "$state")
echo "kept $(find "$state" -name record.json | wc -l) run records in $state"
