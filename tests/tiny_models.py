"""Tiny models and a word-level tokenizer built from configs, for tests: no download, milliseconds to build.

The tokenizer is a real `PreTrainedTokenizerFast` (word level, with bos/eos/pad/unk and a chat template), so the
package's tokenization, padding and chat-template code paths run exactly as with a hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>"]
WORDS = (
    "the a an is was and or but not very good bad great awful fine ok movie food service day cat dog "
    "review summary post question answer please tell me about how why what it this that i you we they "
    "happy sad nice terrible lovely boring fun long short help thanks yes no : . , ! ?"
).split()

# Messages render as "<user> text <assistant> text </s>"; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '> ' + m['content'] + ' ' }}"
    "{% if m['role'] == 'assistant' %}{{ '</s> ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def tiny_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=["<user>", "<assistant>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    # Word-level decode must join with spaces (the default decoder would glue words together).
    fast.backend_tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return fast


def _config(tokenizer, **overrides) -> LlamaConfig:
    kw = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_causal_lm(tokenizer=None, seed: int = 0, **overrides) -> LlamaForCausalLM:
    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, **overrides))
    return model.eval()  # from_config/constructors return train mode; dropout must not make tests random


def tiny_reward_model(tokenizer=None, seed: int = 1, **overrides) -> LlamaForSequenceClassification:
    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tokenizer, num_labels=1, **overrides))
    return model.eval()


def save_tiny_lm(path, seed: int = 0, **overrides) -> Path:
    path = Path(path)
    tok = tiny_tokenizer()
    tiny_causal_lm(tok, seed=seed, **overrides).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_reward_model(path, seed: int = 1, **overrides) -> Path:
    path = Path(path)
    tok = tiny_tokenizer()
    tiny_reward_model(tok, seed=seed, **overrides).save_pretrained(path)
    tok.save_pretrained(path)
    return path
