#!/usr/bin/env bash
# Smoke recipe: build -> prepare -> train -> eval at toy size on tiny models built from configs (no download,
# CPU, well under a minute). `bash recipes/smoke/run.sh`; outputs in runs/smoke/. PYTHON defaults to the venv's.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=recipes/smoke
OUT=runs/smoke
PYTHON=${PYTHON:-.venv/bin/python}
INFALIGN=${INFALIGN:-"$PYTHON -m offline_infalign.cli"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

PYTHONPATH=tests $PYTHON -c "from tiny_models import save_tiny_lm, save_tiny_reward_model as rm
save_tiny_lm('$OUT/base'); rm('$OUT/rm')"
$INFALIGN build --config "$R/build.yaml"
$INFALIGN prepare --config "$R/prepare.yaml"
$INFALIGN train "$R/train.yaml"
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_identity" --out "$OUT/adapter_identity"
$INFALIGN eval --config "$R/eval.yaml"
# DPO baseline (docs/math.md §6): one (best, worst) raw-reward pair per prompt, beta 0.1, from the same samples.
$INFALIGN prepare --input "$OUT/scored" --out "$OUT/prepared_dpo" --kind pairs --pairs best_worst --transform identity --beta 0.1 --test-fraction 0.25
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_dpo" --loss dpo --out "$OUT/adapter_dpo"
# The three arms on the same prompts, paired (docs/math.md §10): each arm's table and its difference from the
# calibrated-RLHF baseline with an interval, both KLs and whether they match. The base samples and the exp
# arm's samples come from eval_cache/ (drawn by the evaluation above); only the two baselines are sampled.
$INFALIGN eval --config "$R/eval.yaml" --policy exp="$OUT/adapter" --policy identity="$OUT/adapter_identity" \
    --policy dpo="$OUT/adapter_dpo" --baseline identity --out "$OUT/compare"   # compare/report.json, comparison.png
