"""The exact-context-length prompt: one clear line or a prompt that fits, never an IndexError."""

import json

import pytest

from offline_infalign.cli import main
from tests.bad_input_helpers import error_line

# ---- the exact-context-length prompt ----------------------------------------------------------------------------
# A model with a learned position table (GPT-2's wpe) raises IndexError on a position past its context, where a
# RoPE model (the Llama fixtures) silently runs on: so the boundary is tested on a GPT-2 with a 128 context. The
# old ref_logps pass re-encoded the completion and appended EOS, putting prompt + max_new_tokens + 1 tokens
# through the model: IndexError for a 120-token prompt + 8 new tokens. fit_prompts keeps prompt + max_new_tokens
# <= context; nothing after it may add a token.

CONTEXT, NEW = 128, 8


def _gpt2_folder(path, tokenizer: str) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import tiny_bpe_tokenizer, tiny_tokenizer

    tok = tiny_bpe_tokenizer() if tokenizer == "bpe" else tiny_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _prompt_of(tok, n: int) -> str:
    """A text prompt that encodes (tokenization.encode_prompt) to exactly n tokens."""
    from offline_infalign.models.tokenization import encode_prompt

    pieces = "the movie was very good and the cat was happy".split() + list("abcdefgh")
    text = ""
    while True:
        for piece in pieces:  # the longest step that does not overshoot
            candidate = f"{text} {piece}".strip()
            if len(encode_prompt(tok, candidate)) <= n:
                text = candidate
                break
        else:
            raise AssertionError(f"no prompt of exactly {n} tokens")
        if len(encode_prompt(tok, text)) == n:
            return text


@pytest.fixture(scope="module", params=["word", "bpe"])
def boundary(request, tmp_path_factory):
    from transformers import AutoTokenizer

    from data_builders import prompt_id

    root = tmp_path_factory.mktemp(f"ctx_{request.param}")
    model = _gpt2_folder(root / "gpt2", request.param)
    tok = AutoTokenizer.from_pretrained(model)
    exact, over = _prompt_of(tok, CONTEXT - NEW), _prompt_of(tok, CONTEXT - NEW + 1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (exact, over, "the cat")))
    return {"model": model, "tok": tok, "prompts": str(prompts), "exact": prompt_id(exact),
            "over": prompt_id(over)}


def _boundary_sample(boundary, out, policy):
    return ["sample", "--model", boundary["model"], "--prompts", boundary["prompts"], "--num-samples", "2",
            "--max-new-tokens", str(NEW), "--device", "cpu", "--on-long-prompt", policy, "--out", str(out)]


def _rows(out):
    from offline_infalign.artifacts.storage import load_artifact

    data, manifest = load_artifact(out)
    return {pid: (len(p), [len(c) for c in cs]) for pid, p, cs in
            zip(data["prompt_id"], data["prompt_ids"], data["completion_ids"])}, manifest


def test_exact_context_prompt_fail(boundary, tmp_path, capsys):
    err = error_line(capsys, _boundary_sample(boundary, tmp_path / "o", "fail"))
    assert f"prompt {boundary['over']} has {CONTEXT - NEW + 1} tokens but the model context leaves {CONTEXT - NEW} " \
           "after max_new_tokens" in err


def test_exact_context_prompt_skip(boundary, tmp_path, capsys):
    assert main(_boundary_sample(boundary, tmp_path / "o", "skip")) == 0
    rows, manifest = _rows(tmp_path / "o")
    assert boundary["over"] not in rows and manifest["num_skipped_long"] == 1
    # The prompt of exactly context - max_new_tokens is sampled whole; any completion cut at max_new_tokens
    # (all are, from a random model) fills the context exactly.
    assert rows[boundary["exact"]][0] == CONTEXT - NEW
    assert all(rows[boundary["exact"]][0] + c <= CONTEXT for c in rows[boundary["exact"]][1])


def test_exact_context_prompt_truncate(boundary, tmp_path, capsys):
    assert main(_boundary_sample(boundary, tmp_path / "o", "truncate")) == 0
    rows, manifest = _rows(tmp_path / "o")
    assert manifest["num_truncated"] == 1 and manifest["num_skipped_long"] == 0
    assert rows[boundary["exact"]][0] == CONTEXT - NEW  # untouched
    assert rows[boundary["over"]][0] <= CONTEXT - NEW  # cut from the left, to the same boundary at most
    for length, completions in rows.values():
        assert all(length + c <= CONTEXT for c in completions)
    # What train and eval do with the record: teacher-force prompt + completion ids through the model.
    import torch
    from transformers import AutoModelForCausalLM

    from offline_infalign.artifacts.storage import load_artifact

    data, _ = load_artifact(tmp_path / "o")
    longest = max((p + c for p, cs in zip(data["prompt_ids"], data["completion_ids"]) for c in cs), key=len)
    model = AutoModelForCausalLM.from_pretrained(boundary["model"])
    with torch.no_grad():
        assert model(torch.tensor([longest])).logits.shape[1] == len(longest) == CONTEXT


def test_fit_prompts_boundary_and_chat_truncation(boundary):
    from offline_infalign.models.sampling import fit_prompts
    from offline_infalign.models.tokenization import encode_prompt

    tok, limit = boundary["tok"], CONTEXT - NEW
    exact = {"prompt_id": "e", "prompt": _prompt_of(tok, limit)}
    over = {"prompt_id": "o", "prompt": _prompt_of(tok, limit + 1)}
    assert fit_prompts(tok, [exact], limit, "fail") == ([exact], 0, 0)
    assert fit_prompts(tok, [exact, over], limit, "skip") == ([exact], 0, 1)
    kept, truncated, skipped = fit_prompts(tok, [exact, over], limit, "truncate")
    assert (truncated, skipped, kept[0]) == (1, 0, exact)
    assert len(encode_prompt(tok, kept[1]["prompt"])) <= limit and kept[1]["prompt_id"] == "o"
    chat = {"prompt_id": "c", "prompt": [{"role": "user", "content": _prompt_of(tok, 60)},
                                         {"role": "assistant", "content": "ok"},
                                         {"role": "user", "content": _prompt_of(tok, 70)}]}
    (fitted,), truncated, _ = fit_prompts(tok, [chat], limit, "truncate")
    assert truncated == 1 and len(encode_prompt(tok, fitted["prompt"])) <= limit
    assert fitted["prompt"][-1]["role"] == "user"  # the oldest messages go first
