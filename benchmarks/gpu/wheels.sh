#!/usr/bin/env bash
# Wheels the GPU check needs beyond a lent machine's python3 (Python 3.12; torch, transformers, peft, accelerate,
# pyarrow, pandas, xxhash are there): datasets and trl with their pure-Python needs (~2 MB), and bitsandbytes for
# the QLoRA row (41 MB; NO_BNB=1 leaves it out). Run here, where pip reaches PyPI; .whl/ is git-ignored locally
# and travels with `carry: [".whl"]` (a call carries 64 MiB in all). vllm is far larger: its row says "skipped".
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_24_x86_64 -d .whl "datasets==${DATASETS_VERSION:-5.2.0}" "trl==${TRL_VERSION:-1.16.0}" \
  dill multiprocess $([ -n "${NO_BNB:-}" ] || echo "bitsandbytes==${BNB_VERSION:-0.50.2}")
du -sh .whl
