"""Tiny models and tokenizers built from configs, for tests: no download, milliseconds to build.

Two tokenizers, both real `PreTrainedTokenizerFast`s with bos/eos/pad and a chat template, so the package's
tokenization, padding and chat-template code paths run exactly as with a hub model:
- `tiny_tokenizer`: word level. Easy to read, but it hides what real tokenizers do.
- `tiny_bpe_tokenizer`: byte-level BPE trained in the fixture on text with multi-byte characters, plus an
  end-of-turn special token `<eot>`. A random model over it emits byte pieces of a character (which decode to
  '\ufffd' and re-encode to other ids) and special tokens (which `skip_special_tokens` drops): the two ways
  stored text stops being the sampled sequence on real models.
`save_tiny_lm(..., tokenizer="bpe")` also gives the model a generation config with two stop ids (eos, eot), as
chat models have.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
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


BPE_SPECIAL = ["<pad>", "<s>", "</s>", "<eot>", "<user>", "<assistant>"]
# Multi-byte characters (2-, 3- and 4-byte UTF-8) so that BPE pieces split characters.
BPE_CORPUS = [
    "the café was très bon, the crème brûlée even better",
    "naïve reviewers say the smørrebrød is großartig",
    "日本語のレビュー: とても良い店です",
    "great food 🍜🍣 and friendly staff 😀 would return 👍",
    "the service was slow — but the view, ah, magnifique",
    "un día perfecto en la playa, señor",
] * 4


def tiny_bpe_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(BPE_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<eot>", "<user>", "<assistant>"],
    )
    fast.chat_template = CHAT_TEMPLATE
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
    # num_labels=2 (with id2label) makes a two-label classifier, as sentiment/safety reward models are.
    model = LlamaForSequenceClassification(_config(tokenizer, **{"num_labels": 1, **overrides}))
    return model.eval()


def save_tiny_lm(path, seed: int = 0, tokenizer: str = "word", **overrides) -> Path:
    """A tiny causal LM and its tokenizer in `path`. tokenizer="bpe": the byte-level BPE tokenizer, and a
    generation config whose stop ids are (eos, <eot>)."""
    path = Path(path)
    tok = tiny_bpe_tokenizer() if tokenizer == "bpe" else tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=seed, **overrides)
    if tokenizer == "bpe":
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<eot>")])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_reward_model(path, seed: int = 1, **overrides) -> Path:
    path = Path(path)
    tok = tiny_tokenizer()
    tiny_reward_model(tok, seed=seed, **overrides).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---- decoders of other architectures (the group forward's checks) --------------------------------------------

# What each exercises in the packed forward: learned absolute positions (gpt2), sliding windows (mistral,
# starcoder2, phi3, gemma2, mixtral), partial rotary (phi3, gpt_neox), soft-capped attention and final logits
# (gemma2, eager: transformers has no sdpa for it), q/k norms (olmo2), layers without RoPE (smollm3), routed
# experts with the router's auxiliary loss on (mixtral, qwen2_moe), logit scaling (cohere, granite).
ARCHITECTURES = ("gpt2", "mistral", "phi3", "gemma2", "olmo2", "gpt_neox", "starcoder2", "smollm3", "mixtral",
                 "qwen2_moe", "cohere", "granite")


def tiny_decoder(arch: str, vocab_size: int = 64, seed: int = 0, window: int = 5, **overrides):
    """A tiny random causal LM of `arch` (2 layers, hidden 32), in eval mode, float32. Sliding windows of
    `window` tokens, shorter than the test sequences, so that a window the packed forward ignored would show."""
    import transformers as tf

    small = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2)
    moe = dict(num_experts_per_tok=2, output_router_logits=True)
    configs = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "mistral": lambda: tf.MistralConfig(**small, sliding_window=window),
        "phi3": lambda: tf.Phi3Config(**small, sliding_window=window, partial_rotary_factor=0.5),
        "gemma2": lambda: tf.Gemma2Config(**small, head_dim=8, sliding_window=window, attn_logit_softcapping=5.0,
                                          final_logit_softcapping=3.0, attn_implementation="eager"),
        "olmo2": lambda: tf.Olmo2Config(**small),
        "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                                             rotary_pct=0.25, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "starcoder2": lambda: tf.Starcoder2Config(**small, sliding_window=window),
        "smollm3": lambda: tf.SmolLM3Config(**small, no_rope_layer_interval=2),  # layer 2 (index 1) has no RoPE
        "mixtral": lambda: tf.MixtralConfig(**small, **moe, num_local_experts=4, sliding_window=window),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**small, **moe, num_experts=4, moe_intermediate_size=16,
                                               shared_expert_intermediate_size=32),
        "cohere": lambda: tf.CohereConfig(**small, logit_scale=0.5),
        "granite": lambda: tf.GraniteConfig(**small, logits_scaling=4.0, attention_multiplier=0.3,
                                            embedding_multiplier=2.0, residual_multiplier=0.5),
    }
    config = configs[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config._experts_implementation = "eager"  # the grouped-matmul experts have no float64 kernel
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config).eval()
