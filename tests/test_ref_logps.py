"""Where the samples' ref_logps come from (stages/sample.py, docs/math.md §9 "one precision for the reference"):
the resolved source and precision in the manifest (never "auto"), the forward pass in float32 after a bfloat16
sampler, no second pass where the sampler's numbers already are it, resume and merge that resolve otherwise are
refused, a kill in the forward pass resumes without the sampler, the vLLM glue's choices (fake engine).

The kill at every instant of the forward pass, compared with an uninterrupted run, is in tests/test_faults.py."""

import json

import datasets
import pytest
import torch

from offline_infalign.artifacts.storage import InjectedFault
from offline_infalign.config import MergeConfig, PrepareConfig, SampleConfig, ScoreConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.models import modeling
from offline_infalign.models.logprobs import ids_logps
from offline_infalign.stages import sample as sample_stage
from offline_infalign.stages.merge import run_merge
from offline_infalign.stages.prepare import run_prepare
from offline_infalign.stages.score import run_score
from tests.test_sampling import _FakeVLLM, fake_vllm  # noqa: F401 - the fixture is used by name
from tests.tiny_models import save_tiny_lm

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "please tell me a review"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref_logps")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"root": root, "prompts": str(prompts), "lm": str(save_tiny_lm(root / "lm")),
            "bpe": str(save_tiny_lm(root / "bpe", tokenizer="bpe"))}


def _cfg(assets, out, **kw):
    base = dict(prompts=assets["prompts"], model=assets["lm"], out=str(out), num_samples=3, max_new_tokens=8,
                chunk_size=2, batch_size=2, device="cpu")
    return load_config(SampleConfig, None, {**base, **kw})


def _teacher_forced(model_dir, rows, dtype=torch.float32):
    """float32 (or `dtype`) teacher-forced sums over the stored ids, one list per row, computed here on its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    out = []
    for r in rows:
        k = len(r["completion_ids"])
        out.append(ids_logps(model, [r["prompt_ids"]] * k, r["completion_ids"], tok.pad_token_id, 64).tolist())
    return out


def _flat(rows, col="ref_logps"):
    return [x for r in rows for x in r[col]]


@pytest.mark.parametrize("backend,source,sampler_dtype,expected", [
    ("hf", "auto", "float32", ("sampler", "float32", "hf")),
    ("hf", "auto", "bfloat16", ("forward", "float32", "hf")),
    ("hf", "forward", "float32", ("forward", "float32", "hf")),
    ("hf", "sampler", "bfloat16", ("sampler", "bfloat16", "hf")),
    ("vllm", "auto", "float32", ("forward", "float32", "hf")),
    ("vllm", "auto", "bfloat16", ("forward", "float32", "hf")),
    ("vllm", "sampler", "bfloat16", ("sampler", "bfloat16", "vllm")),
])
def test_resolution_table(assets, tmp_path, backend, source, sampler_dtype, expected):
    cfg = _cfg(assets, tmp_path, backend=backend, ref_logps_from=source)
    resolved = sample_stage.resolve_ref_logps(cfg, sampler_dtype)
    assert (resolved["ref_logps_from"], resolved["ref_dtype"], resolved["ref_backend"]) == expected
    assert resolved["sampler_dtype"] == sampler_dtype


@pytest.fixture(scope="module")
def bf16_run(assets):
    """A bfloat16 hf sampler with the default --ref-logps-from auto: (its config's keywords, manifest, folder)."""
    kw = dict(model=assets["bpe"], dtype="bfloat16")
    out = assets["root"] / "bf16_run"
    return kw, sample_stage.run_sample(_cfg(assets, out, **kw), progress=False), out


def test_bf16_sampler_stores_float32_teacher_forced_sums(assets, bf16_run, tmp_path):
    _, m, folder = bf16_run
    assert (m["ref_logps_from"], m["ref_dtype"], m["ref_backend"], m["sampler_dtype"], m["backend"]) == (
        "forward", "float32", "hf", "bfloat16", "hf")
    assert m["config"]["resolved"]["ref_dtype"] == "float32"
    rows = datasets.load_from_disk(str(folder)).to_list()
    assert list(rows[0]) == ["prompt_id", "prompt", "prompt_ids", "completions", "completion_ids", "finish_reasons",
                             "ref_logps"]
    assert _flat(rows) == pytest.approx(_flat([{"ref_logps": x} for x in _teacher_forced(assets["bpe"], rows)]),
                                        abs=1e-5)
    # The sampler's own (bf16) numbers of the same ids are another thing: the pass was not redundant.
    bf16 = _flat([{"ref_logps": x} for x in _teacher_forced(assets["bpe"], rows, torch.bfloat16)])
    assert max(abs(a - b) for a, b in zip(bf16, _flat(rows))) > 1e-4
    # score and prepare repeat what train reads
    run_score(load_config(ScoreConfig, None, dict(input=str(folder), out=str(tmp_path / "sc"),
                                                  reward_model="demo")), progress=False)
    prep = run_prepare(load_config(PrepareConfig, None, dict(input=str(tmp_path / "sc"), out=str(tmp_path / "p"),
                                                             kind="listwise", transform="identity", beta=1.0)))
    for key in sample_stage.REF_FACTS:
        assert prep[key] == m[key]


def test_the_sampler_numbers_when_asked_and_no_second_model_for_a_forward_in_its_dtype(assets, tmp_path,
                                                                                       monkeypatch):
    m = sample_stage.run_sample(_cfg(assets, tmp_path / "b", dtype="bfloat16", ref_logps_from="sampler"),
                                progress=False)
    assert (m["ref_logps_from"], m["ref_dtype"], m["ref_backend"]) == ("sampler", "bfloat16", "hf")
    rows = datasets.load_from_disk(str(tmp_path / "b")).to_list()
    assert _flat(rows) == pytest.approx(_flat([{"ref_logps": x} for x in _teacher_forced(
        assets["lm"], rows, torch.bfloat16)]), abs=0.05)  # bf16 decode vs bf16 teacher forcing: rounding only

    loads = []
    real = sample_stage.load_causal_lm  # where the stage looks it up
    monkeypatch.setattr(sample_stage, "load_causal_lm", lambda *a, **k: loads.append(a) or real(*a, **k))
    forward = sample_stage.run_sample(_cfg(assets, tmp_path / "f", ref_logps_from="forward"), progress=False)
    assert len(loads) == 1  # the float32 sampler is the float32 forward's model
    sampler = sample_stage.run_sample(_cfg(assets, tmp_path / "a"), progress=False)  # auto: its own numbers
    assert (sampler["ref_logps_from"], forward["ref_logps_from"]) == ("sampler", "forward")
    a, f = (datasets.load_from_disk(str(tmp_path / d)).to_list() for d in ("a", "f"))
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in f]
    assert _flat(a) == pytest.approx(_flat(f), abs=1e-5)


def test_a_resume_that_resolves_another_precision_is_refused(assets, tmp_path, monkeypatch):
    out = tmp_path / "s"
    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:0")
    with pytest.raises(InjectedFault):
        sample_stage.run_sample(_cfg(assets, out), progress=False)
    monkeypatch.delenv("INFALIGN_FAULT")
    # dtype auto now resolves to bfloat16 (as on a bf16 GPU): the finished chunk was sampled in float32
    monkeypatch.setattr(modeling, "resolve_dtype", lambda dtype, device=None: torch.bfloat16)
    with pytest.raises(InfalignError, match=r"precisions resolved otherwise \(.*sampler_dtype: 'float32' -> "
                                            r"'bfloat16'.*pass --dtype float32"):
        sample_stage.run_sample(_cfg(assets, out), progress=False)


def test_merge_refuses_shards_that_resolved_otherwise(assets, tmp_path, monkeypatch):
    sample_stage.run_sample(_cfg(assets, tmp_path / "s0", shard="0/2"), progress=False)
    monkeypatch.setattr(modeling, "resolve_dtype", lambda dtype, device=None: torch.bfloat16)
    sample_stage.run_sample(_cfg(assets, tmp_path / "s1", shard="1/2"), progress=False)
    with pytest.raises(InfalignError, match="different config.*resolved"):
        run_merge(load_config(MergeConfig, None, dict(inputs=[str(tmp_path / "s0"), str(tmp_path / "s1")],
                                                      out=str(tmp_path / "m"))))


def test_a_kill_in_the_forward_pass_resumes_without_the_sampler(assets, bf16_run, tmp_path, monkeypatch):
    kw, whole, _ = bf16_run
    cfg = _cfg(assets, tmp_path / "s", **kw)
    monkeypatch.setenv("INFALIGN_FAULT", "forward:1")
    with pytest.raises(InjectedFault):
        sample_stage.run_sample(cfg, progress=False)
    monkeypatch.delenv("INFALIGN_FAULT")

    def no_sampler(*a, **k):
        raise AssertionError("the sampler was loaded again")

    monkeypatch.setattr(sample_stage, "_load_sampler", no_sampler)
    resumed = sample_stage.run_sample(cfg, progress=False)
    assert resumed["content_hash"] == whole["content_hash"]
    assert not (tmp_path / "s" / "_work").exists()


@pytest.mark.usefixtures("fake_vllm")
def test_vllm_default_is_a_float32_forward_pass_and_the_engine_dtype_is_read(assets, tmp_path, monkeypatch):
    engines = []

    class Bf16Engine(_FakeVLLM):  # vLLM's auto dtype on a float32 checkpoint
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.llm_engine.model_config.dtype = torch.bfloat16
            engines.append(self)

    import sys

    monkeypatch.setattr(sys.modules["vllm"], "LLM", Bf16Engine)
    m = sample_stage.run_sample(_cfg(assets, tmp_path / "f", backend="vllm", limit=3), progress=False)
    assert (m["ref_logps_from"], m["ref_dtype"], m["ref_backend"], m["sampler_dtype"]) == (
        "forward", "float32", "hf", "bfloat16")
    # no vLLM scoring pass when its numbers are not stored; the CPU engine started without chunked prefill and
    # with a bounded KV cache
    assert all(p.prompt_logprobs is None for call in engines[0].calls for p in call)
    kw = engines[0].kwargs
    assert kw["enable_chunked_prefill"] is False and 0 < kw["kv_cache_memory_bytes"] <= 4 * 2**30
    rows = datasets.load_from_disk(str(tmp_path / "f")).to_list()
    assert _flat(rows) == pytest.approx(_flat([{"ref_logps": x} for x in _teacher_forced(assets["lm"], rows)]),
                                        abs=1e-5)

    m = sample_stage.run_sample(_cfg(assets, tmp_path / "v", backend="vllm", ref_logps_from="sampler",
                                     vllm_memory_fraction=0.3, limit=3), progress=False)
    assert (m["ref_logps_from"], m["ref_dtype"], m["ref_backend"]) == ("sampler", "bfloat16", "vllm")
    assert engines[1].kwargs["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in engines[1].kwargs
    assert any(p.prompt_logprobs == 0 for call in engines[1].calls for p in call)


def test_config_checks(assets, tmp_path):
    with pytest.raises(InfalignError, match="ref_logps_from 'teacher' is not allowed; allowed: auto, sampler, "
                                            "forward"):
        _cfg(assets, tmp_path, ref_logps_from="teacher")
    with pytest.raises(InfalignError, match="ref_dtype 'auto' is not allowed; allowed: float32, bfloat16, float16"):
        _cfg(assets, tmp_path, ref_dtype="auto")
    with pytest.raises(InfalignError, match=r"vllm_memory_fraction must be in \(0, 1\], got 1.5"):
        _cfg(assets, tmp_path, vllm_memory_fraction=1.5)
