#!/usr/bin/env bash
# GPU check: one table — this trainer vs TRL with precomputed reference log-probs on Gemma 3 270M (or
# a random model of its config), QLoRA vs bf16 LoRA peak memory, hf vs vLLM sampling, group vs row log-probs in
# bf16. Under 8 minutes on one H100/H200. See benchmarks/gpu/check.py and benchmarks/README.md ("GPU check").
#
#   benchmarks/gpu/run.sh           # the GPU run
#   benchmarks/gpu/run.sh --toy     # CPU, a tiny Llama, seconds (tests/test_gpu_script.py runs it)
#
# A lent GPU machine has no network and its python3 lacks datasets, trl and bitsandbytes: benchmarks/gpu/wheels.sh
# (run here) puts their wheels in .whl/, which travels with `carry: [".whl"]`; they are installed into /tmp/site below.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
args=("$@")
if [ -n "${OUT:-}" ]; then args+=(--json "$OUT/gpu_check.json"); fi
# The budget is 8 minutes; a run past it is stopped rather than left to eat a lent machine's time.
exec timeout 480 "$PY" benchmarks/gpu/check.py "${args[@]}"
