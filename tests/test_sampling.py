"""hf sampling backend: the token-id record (ids, stop rule, finish reasons, text, ref_logps from the sampler's
logits) on both tokenizer fixtures, per-prompt determinism independent of batching, the sampler law (top-k
then top-p, as transformers), long prompts, the stop set, and the vLLM glue against a fake engine."""

import logging

import pytest
import torch

from offline_infalign.core.errors import InfalignError
from offline_infalign.models.decoding import sample_tokens, truncated_probs
from offline_infalign.models.modeling import stop_token_ids
from offline_infalign.models.sampling import (
    compute_ref_logps,
    fit_prompts,
    prompt_seed,
    sample_completions,
)
from offline_infalign.models.tokenization import encode_completion, encode_prompt
from tests.tiny_models import save_tiny_lm, tiny_causal_lm, tiny_tokenizer

PROMPTS = ["how was the movie", "tell me about the cat", [{"role": "user", "content": "why is it good"}],
           "the food", "a day", "what"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]
BPE_PROMPTS = ["the café was", "日本語の", [{"role": "user", "content": "great food 🍜"}], "un día", "the", "ah"]


@pytest.fixture(scope="module")
def tok_model():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module", params=["word", "bpe"])
def fixture(request, tmp_path_factory):
    """(name, tokenizer, model, prompts) for the word-level and the byte-level BPE fixture, loaded from disk as a
    hub model would be (the BPE model's generation config lists two stop ids: </s> and <eot>)."""
    name = request.param
    tok, model = _load(save_tiny_lm(tmp_path_factory.mktemp(name) / "lm", tokenizer=name))
    return name, tok, model, PROMPTS if name == "word" else BPE_PROMPTS


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
        assert a["completion_ids"] == b["completion_ids"] == c["completion_ids"]
        assert a["finish_reasons"] == b["finish_reasons"] == c["finish_reasons"]
        torch.testing.assert_close(torch.tensor(a["ref_logps"]), torch.tensor(b["ref_logps"]), atol=1e-4, rtol=0)
    assert [r["completions"] for r in subset] == [r["completions"] for r in full[2:4]]
    # The K samples of one prompt differ from each other, and another seed gives other draws.
    assert len(set(full[0]["completions"])) > 1
    assert [r["completions"] for r in _sample(tok_model, seed=1)] != [r["completions"] for r in full]


def test_prompt_seed_depends_on_seed_and_prompt_id():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b")}) == 3
    assert 0 <= prompt_seed(5, "zz") < 2**63


def _teacher_forced(model, prompt_ids, completion_ids) -> float:
    """Independent path: one unpadded sequence, Σ log p(y_t | prefix) over the completion ids, in float64."""
    seq = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0].double(), -1)
    return sum(lp[len(prompt_ids) + t - 1, c].item() for t, c in enumerate(completion_ids))


@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7, "top_k": 40, "top_p": 0.9}])
def test_record_round_trips_and_ref_logps_are_of_the_sampled_ids(fixture, settings):
    name, tok, model, prompts = fixture
    stop = stop_token_ids(model, tok)
    res = sample_completions(model, tok, prompts, IDS, num_samples=4, max_new_tokens=24, progress=False,
                             **settings)
    old_round_trip_fails = []
    for prompt, r in zip(prompts, res):
        assert r["prompt_ids"] == encode_prompt(tok, prompt)
        assert len(r["completion_ids"]) == len(r["finish_reasons"]) == len(r["completions"]) == 4
        for ids, finish, text, logp in zip(r["completion_ids"], r["finish_reasons"], r["completions"],
                                           r["ref_logps"]):
            body = ids[:-1] if finish == "stop" else ids
            assert text == tok.decode(body, skip_special_tokens=True)
            # At any temperature/top-k/top-p the stored value is log π_ref of exactly these ids at T = 1.
            assert logp == pytest.approx(_teacher_forced(model, r["prompt_ids"], ids), abs=1e-4)
            old_round_trip_fails.append(tok(text, add_special_tokens=False)["input_ids"] != body)
        assert r["ref_logps"] == pytest.approx(compute_ref_logps(model, tok, [prompt] * 4, r["completion_ids"]),
                                               abs=1e-4)
    if name == "bpe":
        # The point of the record: re-encoding the text gives other ids (split multi-byte characters, dropped
        # special tokens) — and so another log-prob, the old `ref_logps`.
        assert any(old_round_trip_fails)
        r = res[0]
        old = compute_ref_logps(model, tok, [prompts[0]] * 4, [encode_completion(tok, c) for c in r["completions"]])
        assert max(abs(a - b) for a, b in zip(old, r["ref_logps"])) > 1.0
    assert stop == ([tok.eos_token_id, tok.convert_tokens_to_ids("<eot>")] if name == "bpe" else [tok.eos_token_id])


def test_stop_rule(fixture):
    name, tok, model, prompts = fixture
    stop = set(stop_token_ids(model, tok))
    res = sample_completions(model, tok, prompts, IDS, num_samples=8, max_new_tokens=40, progress=False)
    ends = set()
    for r in res:
        for ids, finish in zip(r["completion_ids"], r["finish_reasons"]):
            assert not stop & set(ids[:-1])  # nothing continues past a stop id
            if finish == "stop":
                assert ids[-1] in stop and len(ids) <= 40
                ends.add(ids[-1])
            else:
                assert finish == "length" and len(ids) == 40 and ids[-1] not in stop
    finishes = {f for r in res for f in r["finish_reasons"]}
    assert finishes == {"stop", "length"}  # both kinds occur, so the checks above bite
    assert ends == stop  # the BPE model also ends on <eot>, its generation config's second stop id


def test_extra_stop_ids_cut_the_same_draws_at_their_first_occurrence(fixture):
    name, tok, model, prompts = fixture
    base = sample_completions(model, tok, prompts, IDS, num_samples=4, max_new_tokens=16, progress=False)
    # A token the model draws often, as an extra stop id: every completion becomes the prefix of the same draw
    # (same uniforms) through that token's first occurrence.
    counts = torch.bincount(torch.tensor([t for r in base for ids in r["completion_ids"] for t in ids]))
    extra = int(counts.argmax())
    stop = sorted({*stop_token_ids(model, tok), extra})
    assert stop_token_ids(model, tok, extra=[extra]) == stop
    cut = sample_completions(model, tok, prompts, IDS, num_samples=4, max_new_tokens=16, progress=False,
                             stop_token_ids=stop)
    changed = 0
    for rb, rc in zip(base, cut):
        for ids, short, finish, logp in zip(rb["completion_ids"], rc["completion_ids"], rc["finish_reasons"],
                                            rc["ref_logps"]):
            end = next((i + 1 for i, t in enumerate(ids) if t in stop), len(ids))
            assert short == ids[:end] and (finish == "stop") == (short[-1] in stop)
            assert logp == pytest.approx(_teacher_forced(model, rc["prompt_ids"], short), abs=1e-4)
            changed += short != ids
    assert changed > 0


def test_stop_token_ids_sources(tmp_path):
    from transformers import GenerationConfig

    tok = tiny_tokenizer()
    bpe = save_tiny_lm(tmp_path / "bpe", tokenizer="bpe")
    word = save_tiny_lm(tmp_path / "word")
    btok, bmodel = _load(bpe)
    eos, eot = btok.eos_token_id, btok.convert_tokens_to_ids("<eot>")
    assert stop_token_ids(str(bpe), btok) == stop_token_ids(bmodel, btok) == [eos, eot]
    assert stop_token_ids(GenerationConfig(eos_token_id=7), tok, extra=(9, 7)) == sorted({7, 9, tok.eos_token_id})
    assert stop_token_ids(str(word), tok) == [tok.eos_token_id]
    (word / "generation_config.json").unlink()  # derived from config.json, as from_pretrained would
    assert stop_token_ids(str(word), tok) == [tok.eos_token_id]
    assert stop_token_ids(None, None, [5, 3]) == [3, 5]
    with pytest.raises(InfalignError, match="stop token ids must be integers >= 0, got -1"):
        stop_token_ids(None, tok, [-1])
    with pytest.raises(InfalignError, match="stop_token_ids must hold at least one id"):
        sample_completions(bmodel, btok, ["a"], ["a"], 2, 2, progress=False, stop_token_ids=[])


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


def _transformers_kept(logits, temperature, top_k, top_p):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    # The order generate() applies them in with do_sample=True (GenerationMixin._get_logits_processor).
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                                  + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    return torch.isfinite(warpers(None, logits.clone()))


def test_top_k_then_top_p_in_the_transformers_order():
    # probs .3 .3 .2 .1 .1: top_k 2 leaves .3 .3, renormalized to .5 .5, and top_p .5 keeps ONE of them
    # (without renormalizing, the second token's .3 above it would be < .5 and two would stay).
    logits = torch.tensor([[0.3, 0.3, 0.2, 0.1, 0.1]]).log()
    probs = truncated_probs(logits, 1.0, 2, 0.5)
    assert int((probs > 0).sum()) == 1 == int(_transformers_kept(logits, 1.0, 2, 0.5).sum())
    assert probs.max().item() == pytest.approx(1.0)
    # Ties with the k-th are kept, as TopKLogitsWarper does: top_k 3 keeps .3 .3 .2; top_k 4 keeps all five
    # (the 4th, .1, ties with the 5th).
    assert int((truncated_probs(logits, 1.0, 3) > 0).sum()) == 3
    assert int((truncated_probs(logits, 1.0, 4) > 0).sum()) == 5 == int(_transformers_kept(logits, 1.0, 4, 1.0).sum())
    gen = torch.Generator().manual_seed(0)
    for temperature, top_k, top_p in [(1.0, 5, 0.9), (0.7, 20, 0.5), (1.3, 0, 0.8), (1.0, 8, 1.0), (0.5, 50, 0.95)]:
        logits = torch.randn(64, 100, generator=gen) * 2
        kept = truncated_probs(logits, temperature, top_k, top_p) > 0
        assert torch.equal(kept, _transformers_kept(logits, temperature, top_k, top_p)), (temperature, top_k, top_p)
        # Renormalized over the kept set: the tempered softmax restricted to it.
        p = torch.softmax(logits / temperature, -1) * kept
        torch.testing.assert_close(truncated_probs(logits, temperature, top_k, top_p), p / p.sum(-1, keepdim=True))


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
    per-request seeded sampling of `n` completions that stops as vLLM v1's check_stop does (the length cap
    first, then EOS unless ignore_eos, then stop_token_ids; the stop token stays in token_ids unless
    `drop_stop`, as a version that left it out would), and `prompt_logprobs` for a scoring pass."""

    def __init__(self, model=None, tokenizer=None, drop_stop=False, **kwargs):
        from types import SimpleNamespace

        if isinstance(model, str):  # built by load_vllm(path, ...)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer, model = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
        self.model, self.tok, self.kwargs, self.calls, self.drop_stop = model.eval(), tokenizer, kwargs, [], drop_stop
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=128, dtype=torch.float32))

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
                seq, finish, reason = list(ids), None, None
                while finish is None:
                    with torch.no_grad():
                        logits = self.model(torch.tensor([seq])).logits[0, -1]
                    seq.append(int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1, generator=gen)))
                    if len(seq) - len(ids) >= sp.max_tokens:
                        finish = "length"
                    elif not sp.ignore_eos and seq[-1] == self.tok.eos_token_id:
                        finish = "stop"
                    elif seq[-1] in (sp.stop_token_ids or ()):
                        finish, reason = "stop", seq[-1]
                out = seq[len(ids):]
                if self.drop_stop and finish == "stop":
                    out = out[:-1]
                completions.append(SimpleNamespace(token_ids=out, finish_reason=finish, stop_reason=reason))
            outs.append(SimpleNamespace(outputs=completions))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    import sys
    from types import ModuleType, SimpleNamespace

    vllm, inputs, platforms = ModuleType("vllm"), ModuleType("vllm.inputs"), ModuleType("vllm.platforms")
    defaults = {"prompt_logprobs": None, "n": 1, "stop_token_ids": None, "ignore_eos": False}
    vllm.SamplingParams = lambda **kw: SimpleNamespace(**{**defaults, **kw})
    vllm.LLM = _FakeVLLM
    inputs.TokensPrompt = lambda **kw: dict(kw)
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    vllm.inputs, vllm.platforms = inputs, platforms
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)


@pytest.mark.parametrize("drop_stop", [False, True])
def test_vllm_backend_glue_with_a_fake_engine(fixture, fake_vllm, drop_stop):
    from offline_infalign.models.vllm_sampling import sample_completions_vllm

    name, tok, model, prompts = fixture
    stop = stop_token_ids(model, tok)
    llm = _FakeVLLM(model, tok, drop_stop=drop_stop)
    res = sample_completions_vllm(llm, tok, prompts, IDS, 4, 30, seed=7, progress=False, stop_token_ids=stop)
    params = llm.calls[0]
    assert [p.seed for p in params] == [prompt_seed(7, i) % 2**31 for i in IDS]  # seeded per prompt
    assert all(p.n == 4 and p.top_k == -1 and p.max_tokens == 30 for p in params)
    assert all(p.stop_token_ids == stop and p.ignore_eos is False for p in params)
    # Per prompt, independent of which other prompts are in the call.
    alone = _FakeVLLM(model, tok, drop_stop=drop_stop)
    assert sample_completions_vllm(alone, tok, prompts[3:4], IDS[3:4], 4, 30, seed=7, progress=False,
                                   stop_token_ids=stop)[0] == res[3]
    finishes = set()
    for prompt, r in zip(prompts, res):
        assert r["prompt_ids"] == encode_prompt(tok, prompt)
        for ids, finish, text in zip(r["completion_ids"], r["finish_reasons"], r["completions"]):
            finishes.add(finish)
            assert not set(stop) & set(ids[:-1])
            assert (ids[-1] in stop) == (finish == "stop")  # the stop token is in the record either way
            assert finish == "stop" or len(ids) == 30
            assert text == tok.decode(ids[:-1] if finish == "stop" else ids, skip_special_tokens=True)
        expected = compute_ref_logps(model, tok, [prompt] * 4, r["completion_ids"])
        assert r["ref_logps"] == pytest.approx(expected, abs=1e-4)
    assert finishes == {"stop", "length"}


def test_vllm_record_rules():
    from types import SimpleNamespace

    from offline_infalign.models.vllm_sampling import _vllm_record

    tok = tiny_tokenizer()
    eos, stop = tok.eos_token_id, [tok.eos_token_id, 7]

    def rec(ids, finish, reason=None):
        r = _vllm_record(tok, SimpleNamespace(token_ids=ids, finish_reason=finish, stop_reason=reason), stop)
        return r["completion_ids"], r["finish_reason"]

    assert rec([10, 11, eos], "stop") == ([10, 11, eos], "stop")
    assert rec([10, 11], "stop") == ([10, 11, eos], "stop")  # EOS left out of token_ids: put back
    assert rec([10, 11], "stop", 7) == ([10, 11, 7], "stop")  # a stop id left out: put back from stop_reason
    assert rec([10, 7], "length") == ([10, 7], "stop")  # vLLM checks the cap first; a final stop id is a stop
    assert rec([10, 11], "length") == ([10, 11], "length")
    with pytest.raises(InfalignError, match="finish_reason 'abort'"):
        rec([10], "abort")
    with pytest.raises(InfalignError, match="stopped a completion on '##'"):
        rec([10], "stop", "##")


def test_pipeline_vllm_backend(fake_vllm, tmp_path):
    import datasets

    from offline_infalign.config import SampleConfig
    from offline_infalign.stages.sample import run_sample

    lm = save_tiny_lm(tmp_path / "lm", tokenizer="bpe")
    tok, _ = _load(lm)
    (tmp_path / "p.jsonl").write_text('{"prompt": "the café"}\n{"prompt": "日本語"}\n')
    m = run_sample(SampleConfig(prompts=str(tmp_path / "p.jsonl"), model=str(lm), out=str(tmp_path / "out"),
                                num_samples=4, max_new_tokens=30, backend="vllm", tensor_parallel_size=1,
                                stop_token_ids=[100]), progress=False)
    assert m["backend"] == "vllm" and m["num_rows"] == 2
    # The stop set of the model folder's generation config (</s>, <eot>), the tokenizer's eos and the extra id.
    assert m["stop_token_ids"] == sorted([tok.eos_token_id, tok.convert_tokens_to_ids("<eot>"), 100])
    rows = datasets.load_from_disk(str(tmp_path / "out")).to_list()
    finishes = [f for r in rows for f in r["finish_reasons"]]
    assert m["cut_fraction"] == finishes.count("length") / 8
    for r in rows:
        assert r["prompt_ids"] == encode_prompt(tok, r["prompt"])
        for ids, finish in zip(r["completion_ids"], r["finish_reasons"]):
            assert (ids[-1] in m["stop_token_ids"]) == (finish == "stop")


def test_models_own_generation_config_does_not_change_draws():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    before = sample_completions(model, tok, PROMPTS[:2], IDS[:2], 4, 8, progress=False)
    g = model.generation_config  # what a hub checkpoint may ship: sampling settings, penalties, processors
    g.do_sample, g.temperature, g.top_p, g.top_k = True, 0.6, 0.9, 5
    g.repetition_penalty, g.no_repeat_ngram_size, g.min_new_tokens, g.min_length = 1.3, 2, 3, 4
    drawn = [t for r in before for ids in r["completion_ids"] for t in ids]
    g.suppress_tokens, g.bad_words_ids, g.forced_eos_token_id = drawn[:2], [[drawn[2]]], drawn[3]
    g.sequence_bias = {(drawn[4],): 5.0}
    # The draws and the ref_logps (read from the logits generate hands the sampler) are unchanged.
    assert sample_completions(model, tok, PROMPTS[:2], IDS[:2], 4, 8, progress=False,
                              stop_token_ids=[tok.eos_token_id]) == before
    assert model.generation_config is g  # restored after sampling


