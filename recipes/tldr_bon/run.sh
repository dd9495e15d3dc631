#!/usr/bin/env bash
# Reddit TL;DR, best-of-8: build -> prepare (identity baseline) -> train all three -> eval, then one paired comparison.
# Run from anywhere: `bash recipes/tldr_bon/run.sh`. Outputs go to runs/tldr_bon/ in the repo root.
# Every stage resumes or is skipped-safe on rerun (build resumes finished chunks; train: add
# `--resume-from-checkpoint latest`). Set INFALIGN to another launcher if needed, e.g.
# INFALIGN="python -m offline_infalign.cli".
set -euo pipefail
cd "$(dirname "$0")/../.."
R=recipes/tldr_bon
OUT=runs/tldr_bon
INFALIGN=${INFALIGN:-infalign}

$INFALIGN build --config "$R/build.yaml"                    # samples/, scored/, prepared/ (exp tilt, auto)
$INFALIGN prepare --config "$R/prepare.yaml"                # prepared_identity/ (baseline, same KL budget)
$INFALIGN train "$R/train.yaml"                             # adapter/
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_identity" --out "$OUT/adapter_identity"
$INFALIGN eval --config "$R/eval.yaml"                      # eval/report.json + plots
# DPO baseline (docs/math.md §6): one (best, worst) raw-reward pair per prompt, beta 0.1, from the same samples.
$INFALIGN prepare --input "$OUT/scored" --out "$OUT/prepared_dpo" --kind pairs --pairs best_worst --transform identity --beta 0.1 --test-fraction 0.1
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_dpo" --loss dpo --out "$OUT/adapter_dpo"
# The three arms on the same prompts, paired (docs/math.md §10): each arm's table and its difference from the
# calibrated-RLHF baseline with an interval, both KLs and whether they match. The base samples and the exp
# arm's samples come from eval_cache/ (drawn by the evaluation above); only the two baselines are sampled.
$INFALIGN eval --config "$R/eval.yaml" --policy exp="$OUT/adapter" --policy identity="$OUT/adapter_identity" \
    --policy dpo="$OUT/adapter_dpo" --baseline identity --out "$OUT/compare"   # compare/report.json, comparison.png
