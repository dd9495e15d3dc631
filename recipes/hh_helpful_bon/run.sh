#!/usr/bin/env bash
# Anthropic HH helpful, best-of-4: build -> prepare (identity baseline) -> train both -> eval both.
# Run from anywhere: `bash recipes/hh_helpful_bon/run.sh`. Outputs go to runs/hh_helpful_bon/ in the repo root.
# Every stage resumes or is skipped-safe on rerun (build resumes finished chunks; train: add
# `--resume-from-checkpoint latest`). Set INFALIGN to another launcher if needed, e.g.
# INFALIGN="python -m offline_infalign.cli".
set -euo pipefail
cd "$(dirname "$0")/../.."
R=recipes/hh_helpful_bon
OUT=runs/hh_helpful_bon
INFALIGN=${INFALIGN:-infalign}

$INFALIGN build --config "$R/build.yaml"                    # samples/, scored/, prepared/ (exp tilt, auto)
$INFALIGN prepare --config "$R/prepare.yaml"                # prepared_identity/ (baseline, same KL budget)
$INFALIGN train "$R/train.yaml"                             # adapter/
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_identity" --out "$OUT/adapter_identity"
$INFALIGN eval --config "$R/eval.yaml"                      # eval/report.json + plots
$INFALIGN eval --config "$R/eval.yaml" --policy "$OUT/adapter_identity" --out "$OUT/eval_identity"
# DPO baseline (docs/math.md §6): one (best, worst) raw-reward pair per prompt, beta 0.1, from the same samples.
$INFALIGN prepare --input "$OUT/scored" --out "$OUT/prepared_dpo" --kind pairs --pairs best_worst --transform identity --beta 0.1 --test-fraction 0.1
$INFALIGN train "$R/train.yaml" --dataset "$OUT/prepared_dpo" --loss dpo --out "$OUT/adapter_dpo"
$INFALIGN eval --config "$R/eval.yaml" --policy "$OUT/adapter_dpo" --out "$OUT/eval_dpo"
