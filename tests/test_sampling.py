"""hf sampling backend: per-prompt determinism independent of batching, ref_logps, sampler law, long prompts."""

import logging

import pytest
import torch

from offline_infalign.core.errors import InfalignError
from offline_infalign.sampling import fit_prompts, prompt_seed, sample_completions, sample_tokens
from offline_infalign.tokenization import encode_prompt
from tests.tiny_models import tiny_causal_lm, tiny_tokenizer

PROMPTS = ["how was the movie", "tell me about the cat", [{"role": "user", "content": "why is it good"}],
           "the food", "a day", "what"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def tok_model():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok)


def _sample(tok_model, prompts=PROMPTS, ids=IDS, **kw):
    tok, model = tok_model
    kw = {"num_samples": 4, "max_new_tokens": 6, "batch_size": 8, "progress": False, **kw}
    return sample_completions(model, tok, prompts, ids, **kw)


def test_deterministic_per_prompt_and_independent_of_batching(tok_model):
    full = _sample(tok_model)
    assert len(full) == 6 and all(len(r["completions"]) == len(r["ref_logps"]) == 4 for r in full)
    assert full == _sample(tok_model)  # rerun
    one_by_one = _sample(tok_model, batch_size=1)
    reversed_batches = _sample(tok_model, PROMPTS[::-1], IDS[::-1], batch_size=4)[::-1]
    subset = _sample(tok_model, PROMPTS[2:4], IDS[2:4], batch_size=3)
    for a, b, c in zip(full, one_by_one, reversed_batches):
        assert a["completions"] == b["completions"] == c["completions"]
        torch.testing.assert_close(torch.tensor(a["ref_logps"]), torch.tensor(b["ref_logps"]), atol=1e-4, rtol=0)
    assert [r["completions"] for r in subset] == [r["completions"] for r in full[2:4]]
    # The K samples of one prompt differ from each other, and another seed gives other draws.
    assert len(set(full[0]["completions"])) > 1
    assert [r["completions"] for r in _sample(tok_model, seed=1)] != [r["completions"] for r in full]


def test_prompt_seed_depends_on_seed_and_prompt_id():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b")}) == 3
    assert 0 <= prompt_seed(5, "zz") < 2**63


def test_ref_logps_equal_independent_teacher_forcing(tok_model):
    tok, model = tok_model
    res = _sample(tok_model, PROMPTS[:3], IDS[:3], temperature=0.8, top_k=10)
    for prompt, r in zip(PROMPTS[:3], res):
        for text, logp in zip(r["completions"], r["ref_logps"]):
            p_ids = encode_prompt(tok, prompt)
            # Independent path: one unpadded sequence, sum log p(y_t | prefix) token by token.
            c_ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seq = torch.tensor([p_ids + c_ids])
            with torch.no_grad():
                lp = torch.log_softmax(model(seq).logits[0].double(), -1)
            expected = sum(lp[len(p_ids) + t - 1, c].item() for t, c in enumerate(c_ids))
            assert logp == pytest.approx(expected, abs=1e-4)


def test_chat_prompt_uses_template(tok_model):
    tok, model = tok_model
    msgs = [{"role": "user", "content": "why is it good"}]
    text = "<user> why is it good <assistant>"
    assert encode_prompt(tok, msgs) == tok(text, add_special_tokens=False)["input_ids"]
    # The tiny tokenizer adds no BOS, so the templated text as a plain prompt has the same ids: same draws.
    assert _sample(tok_model, [msgs], ["x"]) == _sample(tok_model, [text], ["x"])


def test_sample_tokens_follows_the_tempered_truncated_law():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    n = 40000
    u = torch.rand(n, generator=gen)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.7)]:
        tokens = sample_tokens(logits.expand(n, -1), u, temperature, top_k, top_p)
        freq = torch.bincount(tokens, minlength=5).double() / n
        p = torch.softmax(logits[0].double() / temperature, -1)
        if top_k:
            p[p.argsort(descending=True)[top_k:]] = 0
        if top_p < 1:
            # sorted probs: 0.563 (token 0), 0.207 (token 1: mass above it 0.563 < 0.7, kept),
            # 0.126 (token 4: mass above it 0.770 >= 0.7, dropped), ...
            keep = torch.zeros(5, dtype=torch.bool)
            keep[[0, 1]] = True
            p = p * keep
        p = p / p.sum()
        assert torch.allclose(freq, p, atol=0.01), (temperature, top_k, top_p, freq, p)


def test_bad_parameters(tok_model):
    with pytest.raises(InfalignError, match="num_samples must be an integer >= 1, got 0"):
        _sample(tok_model, num_samples=0)
    with pytest.raises(InfalignError, match="temperature must be > 0, got 0"):
        _sample(tok_model, temperature=0)
    with pytest.raises(InfalignError, match="top_p must be in \\(0, 1\\], got 1.5"):
        _sample(tok_model, top_p=1.5)
    nopad = tiny_tokenizer(pad=False)
    with pytest.raises(InfalignError, match="has no pad_token"):
        sample_completions(tok_model[1], nopad, ["a"], ["a"], 2, 2, progress=False)


def test_long_prompts(tok_model, caplog):
    tok, _ = tok_model
    long_text = " ".join(["very good"] * 20)  # 40 words = 40 tokens (no BOS in the tiny tokenizer)
    rows = [{"prompt_id": "short", "prompt": "the cat"}, {"prompt_id": "long", "prompt": long_text}]
    with pytest.raises(InfalignError, match="prompt long has 40 tokens but the model context leaves 10"):
        fit_prompts(tok, rows, 10, "fail")
    kept, t, s = fit_prompts(tok, rows, 10, "skip")
    assert [r["prompt_id"] for r in kept] == ["short"] and (t, s) == (0, 1)
    with caplog.at_level(logging.WARNING, logger="offline_infalign"):
        kept, t, s = fit_prompts(tok, rows, 10, "truncate")
    assert (t, s) == (1, 0) and "prompt long truncated from the left: 40 -> 10 tokens" in caplog.text
    assert kept[1]["prompt"] == " ".join(["very good"] * 5)  # the LAST 10 words survive
    msgs = [{"role": "user", "content": "old turn"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": long_text}]
    kept, t, _ = fit_prompts(tok, [{"prompt_id": "m", "prompt": msgs}], 12, "truncate")
    assert len(kept[0]["prompt"]) == 1 and len(encode_prompt(tok, kept[0]["prompt"])) <= 12
    assert kept[0]["prompt"][0]["content"].endswith("very good")
    with pytest.raises(InfalignError, match="on_long_prompt must be one of truncate, skip, fail, got 'cut'"):
        fit_prompts(tok, rows, 10, "cut")


class _FakeVLLM:
    """A stand-in for `vllm.LLM` (vLLM is never imported in CI): the tiny HF model behind vLLM's interface —
    per-request seeded sampling of `n` completions, and `prompt_logprobs` for a scoring pass."""

    def __init__(self, model=None, tokenizer=None, **kwargs):
        from types import SimpleNamespace

        if isinstance(model, str):  # built by load_vllm(path, ...)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer, model = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
        self.model, self.tok, self.kwargs, self.calls = model.eval(), tokenizer, kwargs, []
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=128))

    def generate(self, prompts, params, use_tqdm=False):
        from types import SimpleNamespace

        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append(params)
        outs = []
        for prompt, sp in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            if sp.prompt_logprobs is not None:
                with torch.no_grad():
                    lp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].double(), -1)
                plp = [None] + [{ids[t]: SimpleNamespace(logprob=lp[t - 1, ids[t]].item())} for t in range(1, len(ids))]
                outs.append(SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=plp, outputs=[]))
                continue
            gen = torch.Generator().manual_seed(sp.seed)
            completions = []
            for _ in range(sp.n):
                seq = list(ids)
                for _ in range(sp.max_tokens):
                    with torch.no_grad():
                        logits = self.model(torch.tensor([seq])).logits[0, -1]
                    seq.append(int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1, generator=gen)))
                    if seq[-1] == self.tok.eos_token_id:
                        break  # vLLM keeps the EOS id in token_ids
                completions.append(SimpleNamespace(token_ids=seq[len(ids):]))
            outs.append(SimpleNamespace(outputs=completions))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    import sys
    from types import ModuleType, SimpleNamespace

    vllm, inputs = ModuleType("vllm"), ModuleType("vllm.inputs")
    vllm.SamplingParams = lambda **kw: SimpleNamespace(**{"prompt_logprobs": None, "n": 1, **kw})
    vllm.LLM = _FakeVLLM
    inputs.TokensPrompt = lambda **kw: dict(kw)
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


def test_vllm_backend_glue_with_a_fake_engine(tok_model, fake_vllm):
    from offline_infalign.sampling import compute_ref_logps, sample_completions_vllm

    tok, model = tok_model
    llm = _FakeVLLM(model, tok)
    res = sample_completions_vllm(llm, tok, PROMPTS, IDS, 3, 5, seed=7, progress=False)
    params = llm.calls[0]
    assert [p.seed for p in params] == [prompt_seed(7, i) % 2**31 for i in IDS]  # seeded per prompt
    assert all(p.n == 3 and p.top_k == -1 and p.max_tokens == 5 for p in params)
    # Per prompt, independent of which other prompts are in the call.
    alone = sample_completions_vllm(_FakeVLLM(model, tok), tok, PROMPTS[3:4], IDS[3:4], 3, 5, seed=7, progress=False)
    assert alone[0] == res[3]
    for prompt, r in zip(PROMPTS, res):
        assert len(r["completions"]) == 3 and all("</s>" not in c for c in r["completions"])
        expected = compute_ref_logps(model, tok, [prompt] * 3, r["completions"])
        assert r["ref_logps"] == pytest.approx(expected, abs=1e-4)


def test_pipeline_vllm_backend(fake_vllm, tmp_path):
    from offline_infalign.config import SampleConfig
    from offline_infalign.stages.sample import run_sample
    from tests.tiny_models import save_tiny_lm

    lm = save_tiny_lm(tmp_path / "lm")
    (tmp_path / "p.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": "a dog"}\n')
    m = run_sample(SampleConfig(prompts=str(tmp_path / "p.jsonl"), model=str(lm), out=str(tmp_path / "out"),
                                num_samples=2, max_new_tokens=3, backend="vllm", tensor_parallel_size=1),
                   progress=False)
    assert m["backend"] == "vllm" and m["num_rows"] == 2


def test_models_own_generation_config_does_not_change_draws():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    before = sample_completions(model, tok, PROMPTS[:2], IDS[:2], 4, 8, progress=False)
    g = model.generation_config  # what a hub checkpoint may ship: sampling settings and penalties
    g.do_sample, g.temperature, g.top_p, g.top_k = True, 0.6, 0.9, 5
    g.repetition_penalty, g.no_repeat_ngram_size, g.min_new_tokens = 1.3, 2, 3
    assert sample_completions(model, tok, PROMPTS[:2], IDS[:2], 4, 8, progress=False) == before
