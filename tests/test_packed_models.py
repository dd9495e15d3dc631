"""The group forward on the architectures users bring: exact where it packs, refused by name where it cannot,
and the first-batch check (`packed_check.check_packed`) that decides.

Exactness is shown in float64 (log-probs and gradients of every weight against each sequence's own forward,
unpadded: the model's own computation), the check in float32 and bfloat16, as runs use it. Architectures:
tests/tiny_models.py `ARCHITECTURES` (2 layers, hidden 32; sliding windows of 5 tokens, shorter than the
sequences). Faults are planted in the packed call only (a pre-hook on the model that sees `infalign_layout`).
"""

import logging

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_causal_lm, tiny_decoder, tiny_tokenizer

from offline_infalign.models.grouped_logps import grouped_ids_logps
from offline_infalign.models.groups import pack_sequences
from offline_infalign.models.logprobs import (
    causal_lm,
    completion_logps,
    ids_logps,
    packed_logps,
    pad_pairs,
)
from offline_infalign.models.packed_attention import PREFIX
from offline_infalign.models.packed_check import check_packed, packed_refusal, packing_tolerance

VOCAB = 64
WINDOW = 5


def _sequences(seed=1, prompts=3, k=4):
    """Prompts of 4-14 tokens with k completions of 0-14 (one empty, one repeated): most sequences are longer
    than the window, so a window that the packed forward ignored would show."""
    gen = torch.Generator().manual_seed(seed)
    p_ids, c_ids = [], []
    for _ in range(prompts):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(4, 15, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(k):
            p_ids.append(prompt)
            c_ids.append(torch.randint(3, VOCAB, (int(torch.randint(1, 15, (1,), generator=gen)),),
                                       generator=gen).tolist())
    c_ids[1], c_ids[3] = [], c_ids[2]
    return p_ids, c_ids


def _batch(p_ids, c_ids, completions_per_forward=None):
    return {**pad_pairs(p_ids, c_ids, 0), **pack_sequences(p_ids, c_ids, 0, completions_per_forward)}


def _sharpen(model, std=0.3, seed=0):
    """Peaked random weights: attention that depends on positions and logits far from uniform (at the default
    init of 0.02 a tiny model attends almost uniformly, so positions barely move its log-probs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def _plant(model, fn):
    """Run `fn(kwargs)` on the keyword arguments of the model's packed calls only."""
    def hook(module, args, kwargs):
        if "infalign_layout" in kwargs:
            fn(kwargs)
        return args, kwargs

    return causal_lm(model).register_forward_pre_hook(hook, with_kwargs=True)


def _positions_do_not_restart(kwargs):
    ids = kwargs["input_ids"]
    kwargs["position_ids"] = torch.arange(ids.shape[1]).expand_as(ids)


# ---- every architecture packs exactly ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_packs_exactly(arch, monkeypatch):
    """float32: the check packs. float64: log-probs within 1e-7 nats and every weight's gradient within 1e-6
    relative of each sequence's own forward, in one unit and in units of 2 completions. (Not 1e-14: these
    models run their norms or softmaxes in float32 whatever the weights; GPT-2, GPT-NeoX and StarCoder2 agree
    to 1e-15.)"""
    p_ids, c_ids = _sequences()
    model = tiny_decoder(arch, VOCAB, window=WINDOW)
    check = check_packed(model, _batch(p_ids, c_ids))
    assert check.packed, check.describe()
    assert check.gap <= packing_tolerance(torch.float32) and check.sequences == len(p_ids)
    assert model.config._attn_implementation.startswith(PREFIX)  # installed for the run
    if getattr(model.config, "sliding_window", None):
        assert max(len(p) + len(c) for p, c in zip(p_ids, c_ids)) > 2 * WINDOW
    if arch == "smollm3":
        assert 0 in model.config.no_rope_layers  # a layer without RoPE
    if arch in ("mixtral", "qwen2_moe"):
        assert model.config.output_router_logits  # the router's auxiliary loss is on (unused by the objective)

    monkeypatch.setattr(torch.Tensor, "float", lambda self: self)  # float64 log-softmax on both sides
    model = model.double()
    weights = torch.randn(len(p_ids), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = torch.cat([completion_logps(model, **pad_pairs([p], [c], 0)) for p, c in zip(p_ids, c_ids)])
    (rows * weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for chunk in (None, 2):
        batch = _batch(p_ids, c_ids, chunk)
        got = packed_logps(model, batch["group_units"], batch["group_num_seqs"])[batch["group_seq_index"]]
        torch.testing.assert_close(got, rows, rtol=0, atol=1e-7)
        (got * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        assert grads.keys() == expected.keys()
        for name, g in grads.items():
            err = (g - expected[name]).norm() / expected[name].norm().clamp_min(1e-30)
            assert err < 1e-6, (arch, name, err.item())


# ---- refused by name, before any forward ---------------------------------------------------------------------


def _bloom():
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4))


def _falcon():
    from transformers import FalconConfig, FalconForCausalLM

    return FalconForCausalLM(FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4))


def _gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                          num_experts_per_tok=1, sliding_window=WINDOW)
    return GptOssForCausalLM(config)


def _lfm2():
    from transformers import Lfm2Config, Lfm2ForCausalLM

    return Lfm2ForCausalLM(Lfm2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      layer_types=["conv", "full_attention"]))


def _llama(**config):
    model = tiny_causal_lm(tiny_tokenizer())
    for key, value in config.items():
        setattr(model.config, key, value)
    return model


REFUSED = {
    "bloom": (_bloom, "ALiBi"),
    "falcon": (_falcon, "FalconForCausalLM's layers do not call transformers' attention interface"),
    "gpt_oss": (_gpt_oss, "attention sinks (GptOssAttention.sinks)"),
    "lfm2": (_lfm2, "layers of type conv"),
    "chunked": (lambda: _llama(attention_chunk_size=4), "chunked attention"),
    "bidirectional": (lambda: _llama(use_bidirectional_attention=True), "bidirectional attention"),
    "linear_attention": (lambda: _llama(layer_types=["linear_attention", "full_attention"]),
                         "layers of type linear_attention"),
    "data_parallel": (lambda: torch.nn.DataParallel(tiny_causal_lm(tiny_tokenizer())), "DataParallel"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_features_the_packed_attention_cannot_express_are_refused_by_name(name):
    build, reason = REFUSED[name]
    model = build().eval()
    assert reason in packed_refusal(model)
    calls = []
    handle = causal_lm(model).register_forward_pre_hook(lambda *a: calls.append(1))
    check = check_packed(model, _batch(*_sequences()))
    handle.remove()
    assert not check.packed and reason in check.reason and check.gap is None
    assert not calls  # decided before any forward
    assert not causal_lm(model).config._attn_implementation.startswith(PREFIX)


def test_what_a_layer_asks_of_the_packed_attention_is_refused_by_name():
    """Arguments the packed attention does not compute, a layer that drops the layout, logits that are not the
    head's output: refused by name at the check, the model's own attention restored."""
    batch = _batch(*_sequences())
    model = tiny_causal_lm(tiny_tokenizer())
    attention = model.model.layers[1].self_attn

    def bias(module, args, kwargs):
        if "infalign_layout" in kwargs:
            kwargs["position_bias"] = torch.zeros(1)
        return args, kwargs

    handle = attention.register_forward_pre_hook(bias, with_kwargs=True)
    check = check_packed(model, batch)
    handle.remove()
    assert not check.packed and "LlamaAttention passes attention arguments" in check.reason
    assert "position_bias" in check.reason
    assert model.config._attn_implementation == "sdpa"  # restored

    def drop(module, args, kwargs):
        kwargs.pop("infalign_layout", None)
        return args, kwargs

    handle = attention.register_forward_pre_hook(drop, with_kwargs=True)
    check = check_packed(model, batch)
    handle.remove()
    assert not check.packed and "calls attention without the packed layout" in check.reason

    cohere = tiny_decoder("cohere", VOCAB)
    cohere.logit_scale = 0.25  # the forward scales by this; the config (what the group forward applies) says 0.5
    check = check_packed(cohere, _batch(*_sequences()))
    assert not check.packed and "its logits are not its LM head's output" in check.reason

    assert check_packed(model, batch).packed  # nothing planted: it packs


# ---- the check catches a wrong packed forward --------------------------------------------------------------


@pytest.mark.parametrize("arch,dtype,sharpen", [("gpt2", "float32", False), ("mistral", "float32", True),
                                                ("olmo2", "bfloat16", True), ("qwen2_moe", "bfloat16", True)])
def test_a_wrong_packed_forward_is_caught_by_the_check(arch, dtype, sharpen):
    """Positions that do not restart per completion: GPT-2's learned positions show it at the default init;
    rotary models need peaked weights (at init a tiny model attends almost uniformly)."""
    model = tiny_decoder(arch, VOCAB)
    model = (_sharpen(model) if sharpen else model).to(getattr(torch, dtype))
    batch = _batch(*_sequences())
    assert check_packed(model, batch).packed  # exact as it is
    handle = _plant(model, _positions_do_not_restart)
    check = check_packed(model, batch)
    handle.remove()
    assert not check.packed and check.gap > 3 * check.tolerance, check.describe()
    assert check.tolerance == packing_tolerance(getattr(torch, dtype)) and check.dtype == dtype
    text = check.describe()
    assert text.startswith("packed and per-row log-probs differ: packed and per-row log-probs differ by up to")
    assert f"{check.gap:.3g} nats per √token" in text and f"in {dtype}" in text
    assert not model.config._attn_implementation.startswith(PREFIX)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_weights_pack_without_false_refusal(arch):
    """bf16 on CPU, peaked weights (logits of several nats: the rounding is largest there): every exact
    architecture packs, its gap below a third of bf16's tolerance."""
    model = _sharpen(tiny_decoder(arch, VOCAB, window=WINDOW)).to(torch.bfloat16)
    check = check_packed(model, _batch(*_sequences(k=6)))
    assert check.packed and check.dtype == "bfloat16", check.describe()
    assert check.gap < packing_tolerance(torch.bfloat16) / 3, check.describe()


def test_tolerance_per_dtype():
    assert packing_tolerance(torch.float32) == packing_tolerance(torch.float64) == 1e-3
    assert packing_tolerance(torch.bfloat16) == 0.3 and packing_tolerance(torch.float16) == 0.0375
    model = tiny_causal_lm(tiny_tokenizer())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check = check_packed(model, _batch(*_sequences()))
    assert check.dtype == "bfloat16" and check.packed, check.describe()  # autocast decides the dtype


# ---- grouped_ids_logps --------------------------------------------------------------------------------------


def _interleaved():
    """Two prompts' sequences interleaved, one prompt with more sequences than a batch, duplicates, an empty
    completion."""
    p_ids, c_ids = _sequences(prompts=3, k=5)
    order = np.random.default_rng(0).permutation(len(p_ids))
    return [p_ids[i] for i in order], [c_ids[i] for i in order]


def test_grouped_ids_logps_is_ids_logps_packed(monkeypatch):
    import offline_infalign.models.grouped_logps as G

    model = tiny_decoder("gpt2", VOCAB)
    p_ids, c_ids = _interleaved()
    calls = []
    original = G.packed_logps
    monkeypatch.setattr(G, "packed_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    want = ids_logps(model, p_ids, c_ids, 0, batch_size=4)
    got = grouped_ids_logps(model, p_ids, c_ids, 0, batch_size=4)
    assert got.dtype == np.float32 and got.shape == (len(p_ids),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert got[[i for i, c in enumerate(c_ids) if not c]].tolist() == [0.0]
    # 3 prompts of 5 sequences, at most 4 sequences per batch: each prompt cut into 4 + 1, in order 4 | 1 | 4 | ...
    assert len(calls) == 6
    assert grouped_ids_logps(model, [], [], 0).shape == (0,)


def test_grouped_ids_logps_runs_per_row_when_the_check_fails(caplog):
    model = tiny_decoder("gpt2", VOCAB)
    p_ids, c_ids = _interleaved()
    handle = _plant(model, _positions_do_not_restart)
    with caplog.at_level(logging.WARNING, logger="offline_infalign.models.grouped_logps"):
        got = grouped_ids_logps(model, p_ids, c_ids, 0, batch_size=4)
    handle.remove()
    warnings = [r for r in caplog.records if "running per row" in r.getMessage()]
    assert len(warnings) == 1 and "nats per √token" in warnings[0].getMessage()
    np.testing.assert_allclose(got, ids_logps(model, p_ids, c_ids, 0, batch_size=4), rtol=0, atol=1e-6)
