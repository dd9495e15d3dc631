"""hf backend's shared-prefill decode loop (decoding.py) against the `generate` reference: the same completion ids,
finish reasons and ref_logps (1e-4) on both tokenizer fixtures, at 1 and 3 prompts per batch, plain and tempered /
top-k / top-p; each prompt's forward runs once and ended rows leave the batch; LoRA-wrapped and sliding-window
(Gemma 3) models."""

import pytest
import torch

from offline_infalign.core.errors import InfalignError
from offline_infalign.models.sampling import sample_completions
from tests.tiny_models import save_tiny_lm, tiny_causal_lm, tiny_tokenizer

PROMPTS = ["how was the movie", "tell me about the cat", [{"role": "user", "content": "why is it good"}],
           "the food", "a day very good bad awful fine ok movie", "what"]
BPE_PROMPTS = ["the café was", "日本語の", [{"role": "user", "content": "great food 🍜"}], "un día", "the", "ah"]
IDS = [f"p{i}" for i in range(len(PROMPTS))]


@pytest.fixture(scope="module", params=["word", "bpe"])
def fixture(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_lm(tmp_path_factory.mktemp(request.param) / "lm", tokenizer=request.param)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    return request.param, tok, model, PROMPTS if request.param == "word" else BPE_PROMPTS


def _both(model, tok, prompts, **kw):
    kw = {"num_samples": 4, "max_new_tokens": 24, "progress": False, **kw}
    return (sample_completions(model, tok, prompts, IDS[: len(prompts)], **kw),
            sample_completions(model, tok, prompts, IDS[: len(prompts)], decoder="generate", **kw))


def _assert_same(new, ref):
    for a, b in zip(new, ref, strict=True):
        assert a["prompt_ids"] == b["prompt_ids"]
        assert a["completion_ids"] == b["completion_ids"]
        assert a["finish_reasons"] == b["finish_reasons"]
        assert a["completions"] == b["completions"]
        torch.testing.assert_close(torch.tensor(a["ref_logps"]), torch.tensor(b["ref_logps"]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7, "top_k": 40, "top_p": 0.9}])
def test_shared_prefill_draws_what_generate_draws(fixture, batch_size, settings):
    name, tok, model, prompts = fixture
    new, ref = _both(model, tok, prompts, batch_size=batch_size, **settings)
    _assert_same(new, ref)
    finishes = {f for r in new for f in r["finish_reasons"]}
    assert finishes == {"stop", "length"}  # rows end at different steps, so dropping them is exercised


def test_each_prompt_runs_once_and_ended_rows_leave_the_batch():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    fed = []  # rows x tokens of every forward call
    handle = model.register_forward_pre_hook(lambda m, a, kw: fed.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        res = sample_completions(model, tok, PROMPTS, IDS, num_samples=8, max_new_tokens=30, batch_size=6,
                                 progress=False)
    finally:
        handle.remove()
    prefill, steps = fed[0], fed[1:]
    assert prefill[0] == len(PROMPTS)  # one row per prompt, not one per draw
    assert all(n == 1 for _, n in steps)  # then one token per active row and step
    rows = [len(ids) for r in res for ids in r["completion_ids"]]
    # A row is fed each of its tokens but its last: no forward is ever spent on an ended row.
    assert sum(r for r, _ in steps) == sum(n - 1 for n in rows)
    assert [r for r, _ in steps] == sorted((r for r, _ in steps), reverse=True)
    assert len(steps) == max(rows) - 1 and min(rows) < max(rows)


def test_lora_wrapped_and_sliding_window_models():
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer()
    lora = get_peft_model(tiny_causal_lm(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False)).eval()
    _assert_same(*_both(lora, tok, PROMPTS, batch_size=3))
    # Gemma 3's sliding-window layers keep only the last window of the cache: repeat and row selection there.
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    gemma = Gemma3ForCausalLM(cfg).eval()
    new, ref = _both(gemma, tok, PROMPTS, batch_size=3, max_new_tokens=12)
    _assert_same(new, ref)
    assert {f for r in new for f in r["finish_reasons"]} == {"stop", "length"}


def test_unknown_decoder():
    tok = tiny_tokenizer()
    with pytest.raises(InfalignError, match="decoder must be one of shared_prefill, generate"):
        sample_completions(tiny_causal_lm(tok), tok, PROMPTS[:1], IDS[:1], 2, 4, progress=False, decoder="beam")


def test_sample_tokens_equals_the_clamped_searchsorted_rule():
    # sample_tokens computes the fallback (last positive-probability token) only for rows whose x reached the
    # total; the result must be the old rule min(searchsorted, last positive) everywhere, edge rows included.
    from offline_infalign.models.decoding import sample_tokens, truncated_probs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(512, 300, generator=gen) * 3
    u = torch.rand(512, generator=gen)
    u[:64] = 1.0  # stands in for u * total rounding up to the total: no cdf entry exceeds x
    u[64:96] = 0.0
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 20, 0.9), (1.0, 5, 1.0), (1.3, 0, 0.5)]:
        probs = truncated_probs(logits, temperature, top_k, top_p)
        cdf = probs.cumsum(-1)
        j = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
        old = torch.minimum(j, (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)).squeeze(-1)
        new = sample_tokens(logits, u, temperature, top_k, top_p)
        assert torch.equal(new, old)
        if top_k or top_p < 1:  # truncated tails: the fallback is not simply the last token
            assert bool((old[:64] < 299).all())
        assert bool((probs.gather(1, new.unsqueeze(-1)) > 0).all())
